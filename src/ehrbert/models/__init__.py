"""What gets served: each model builds, saves, loads and predicts, with no MLflow and no argparse inside.

- `classifier`: the paper's normalizer, a mention's [CLS] vector -> softmax over every vocabulary concept;
- `retrieval`: a contrastively trained encoder and the index of vocabulary names it searches;
- `hybrid`: retrieval and the classifier together, with composite and no-concept answers;
- `encoding`: the length-bucketed, no-gradient encoding loop the three share.

The stages that train them (`ehrbert.finetune`, `ehrbert.hybrid`) and the MLflow pyfunc (`ehrbert.serving`)
import them from here.
"""
