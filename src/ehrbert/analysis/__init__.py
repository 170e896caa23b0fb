"""The paper's case study and error analysis of the fine-tuned normalizers.

- `ehrbert.analysis.attention` (stage ``case_study``): for chosen test mentions, each model's [CLS]
  attention over the word pieces and its top predictions, drawn as heatmaps.
- `ehrbert.analysis.errors` (stage ``error_analysis``): accuracy and F1 per model and corpus, split by
  seen / unseen concept, concept frequency, abbreviation, composite and mention length; the mentions
  where the notes-adapted model and the general base disagree.

Both read what the fine-tuning stage left: its test predictions (one TSV per model, corpus and seed,
`ehrbert.predictions`) and its MLflow runs (the models, read by the case study).
"""
