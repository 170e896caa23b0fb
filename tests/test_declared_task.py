"""A task of one's own, declared in params.yaml: the built-in ncbi and cdr tasks written in exchange formats (a TSV
vocabulary with alternative IDs, BioC XML) read back to the same records, prepared by stage `prepare_task` and
loaded by name; the declarations and inputs that cannot work are errors naming the params key or the file."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json

import pytest
import yaml

from ehrbert import export, prepare_task
from ehrbert.corpora.annotations import read_annotations, write_bioc
from ehrbert.corpora.records import COMBINED, COMPOSITE, Document, Mention, Vocabulary
from ehrbert.corpora.terminology import read_vocabulary, write_tsv
from ehrbert.tasks import (
    PREPARED_FILE,
    SPLITS,
    TaskSpec,
    load_prepared,
    load_pubtator_task,
    load_task,
    read_declared_task,
    save_prepared,
)

EXAMPLE = {
    "vocabulary": {"file": "vocabulary.tsv", "format": "tsv"},
    "annotations": {"format": "bioc", "train": "train.xml", "dev": "dev.xml", "test": "test.xml"},
    "level": "document",
}


def _records(task) -> tuple:
    concepts = [(c.concept_id, c.name, c.synonyms, c.alt_ids) for c in task.vocabulary.concepts]
    splits = {s: [(d.doc_id, d.text, d.title, d.mentions) for d in task.splits[s]] for s in SPLITS}
    return task.level, concepts, splits


def _data_args(tiny_raw_data, tasks_dir) -> argparse.Namespace:
    return argparse.Namespace(
        ncbi_dir=tiny_raw_data / "ncbi_disease",
        ncbi_vocabulary=tiny_raw_data / "medic" / "CTD_diseases.tsv.gz",
        cdr_dir=tiny_raw_data / "bc5cdr",
        cdr_vocabulary=tiny_raw_data / "medic" / "CTD_diseases.tsv.gz",
        cadec_dir=None,
        tasks_dir=tasks_dir,
    )


@pytest.mark.parametrize("builtin", ["ncbi", "cdr"])
def test_a_built_in_task_exported_declared_and_prepared_is_the_built_in_task(tmp_path, tiny_raw_data, builtin):
    """export -> params.yaml `tasks` -> prepare_task -> load_task: the records the stages see are the built-in
    task's, composite and combined mentions, alternative IDs and the kept unknown IDs included."""
    args = _data_args(tiny_raw_data, tmp_path / "tasks")
    original = load_task(builtin, args, {})
    export.export(original, tmp_path / "files")
    params = tmp_path / "params.yaml"
    declared = {**EXAMPLE, "dir": str(tmp_path / "files"), "unknown_ids": "keep"}
    params.write_text(yaml.safe_dump({"tasks": {"mine": declared}}))
    prepare_task.main(
        ["--name", "mine", "--params", str(params), "--out-dir", str(tmp_path / "tasks" / "mine")]
        + ["--metrics", str(tmp_path / "mine.json")]
    )
    prepared = load_task("mine", args, {})
    assert _records(prepared) == _records(original)
    metrics = json.loads((tmp_path / "mine.json").read_text())
    assert metrics["test_mentions"] == len(original.mentions("test")) and metrics["concepts"] == len(
        original.vocabulary
    )
    first = (tmp_path / "tasks" / "mine" / PREPARED_FILE).read_bytes()
    prepare_task.main(
        ["--name", "mine", "--params", str(params), "--out-dir", str(tmp_path / "tasks" / "mine")]
        + ["--metrics", str(tmp_path / "mine.json")]
    )
    assert (tmp_path / "tasks" / "mine" / PREPARED_FILE).read_bytes() == first  # a rerun writes the same bytes
    assert not list((tmp_path / "tasks").glob(".*"))  # no partial folder left behind


def test_a_prepared_task_keeps_the_hierarchy_and_a_flat_one_is_written_without_it(tmp_path, raw_data):
    """MEDIC's parents survive prepare -> load (the reranker's hierarchy features read them); a concept without
    parents is written without the field, so that a flat vocabulary's prepared bytes do not change."""
    task = load_pubtator_task("ncbi", raw_data / "ncbi_disease", raw_data / "medic" / "CTD_diseases.tsv.gz")
    save_prepared(task, tmp_path / "medic")
    back = load_prepared(tmp_path / "medic")
    assert [c.parents for c in back.vocabulary.concepts] == [c.parents for c in task.vocabulary.concepts]
    assert sum(bool(c.parents) for c in back.vocabulary.concepts) > 0.9 * len(task.vocabulary)
    flat = dataclasses.replace(
        task,
        vocabulary=Vocabulary(
            [dataclasses.replace(c, parents=()) for c in task.vocabulary.concepts], task.vocabulary.name
        ),
    )
    save_prepared(flat, tmp_path / "flat")
    with gzip.open(tmp_path / "flat" / PREPARED_FILE, "rt", encoding="utf-8") as handle:
        record = json.load(handle)
    assert all("parents" not in c for c in record["vocabulary"]["concepts"])
    assert all(c.parents == () for c in load_prepared(tmp_path / "flat").vocabulary.concepts)


def test_the_tsv_vocabulary_keeps_alternative_ids_and_bioc_keeps_relations(tmp_path, raw_data):
    medic = load_pubtator_task("ncbi", raw_data / "ncbi_disease", raw_data / "medic" / "CTD_diseases.tsv.gz")
    write_tsv(medic.vocabulary, tmp_path / "medic.tsv")
    back = read_vocabulary(tmp_path / "medic.tsv", "tsv")
    assert [(c.concept_id, c.name, c.synonyms, c.alt_ids) for c in back.concepts] == [
        (c.concept_id, c.name, c.synonyms, c.alt_ids) for c in medic.vocabulary.concepts
    ]
    assert back.canonical("OMIM:114500") == medic.vocabulary.canonical("OMIM:114500") != "OMIM:114500"
    text = "Breast and ovarian cancer, and ataxia-telangiectasia."
    mentions = [
        Mention("d1", ((0, 25),), "Breast and ovarian cancer", ("D001943", "D010051"), COMPOSITE),
        Mention("d1", ((31, 52),), "ataxia-telangiectasia", ("D001260", "D009369"), COMBINED),
        Mention("d1", ((11, 25),), "ovarian cancer", ("D010051",), COMPOSITE),  # parts that share one concept
    ]
    write_bioc([Document("d1", text, mentions)], tmp_path / "d.xml")
    assert read_annotations(tmp_path / "d.xml", "bioc")[0].mentions == mentions


@pytest.mark.parametrize(
    "change, message",
    [
        ({"level": "sentence"}, "tasks.mine: level 'sentence'"),
        ({"unknown_ids": "skip"}, "tasks.mine: unknown_ids 'skip'"),
        ({"vocabulary": {"file": "vocabulary.tsv"}}, r"tasks.mine: vocabulary lacks \['format'\]"),
        ({"annotations": {"format": "bioc", "train": "t.xml"}}, r"annotations lacks \['dev', 'test'\]"),
        (
            {"annotations": {**EXAMPLE["annotations"], "sources": ["MSH"]}},
            r"annotations has unknown keys \['sources'\]",
        ),
        ({"evaluation": "document"}, r"tasks.mine has unknown fields \['evaluation'\]"),
    ],
)
def test_a_declaration_that_cannot_work_names_the_params_key(tmp_path, change, message):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tasks": {"mine": {**EXAMPLE, "dir": str(tmp_path), **change}}}))
    with pytest.raises(SystemExit, match=message):
        prepare_task.main(
            ["--name", "mine", "--params", str(params), "--out-dir", str(tmp_path / "o")]
            + ["--metrics", str(tmp_path / "m.json")]
        )
    assert not (tmp_path / "o").exists()


def test_bad_files_and_unknown_ids_are_errors_naming_the_file(tmp_path, tiny_raw_data):
    args = _data_args(tiny_raw_data, tmp_path / "tasks")
    task = load_task("ncbi", args, {})
    export.export(task, tmp_path / "files")
    spec = TaskSpec(dir=str(tmp_path / "files"), **EXAMPLE)
    gold = sorted({c for m in task.mentions("test") for c in m.concept_ids})[0]
    vocabulary = tmp_path / "files" / "vocabulary.tsv"
    lines = vocabulary.read_text().splitlines(keepends=True)
    vocabulary.write_text("".join(line for line in lines if not line.startswith(gold + "\t")))
    with pytest.raises(
        ValueError, match=rf"test.xml: \d+ of \d+ mentions have gold IDs not in the vocabulary .*{gold}"
    ):
        read_declared_task("mine", spec)
    spec.unknown_ids = "drop"
    dropped = read_declared_task("mine", spec)
    assert len(dropped.mentions("test")) == len(task.mentions("test")) - sum(
        gold in m.concept_ids for m in task.mentions("test")
    )
    vocabulary.write_text("".join(lines) + lines[1])  # a concept given twice
    with pytest.raises(ValueError, match=rf"vocabulary.tsv:{len(lines) + 1}: concept ID .* already given on line 2"):
        read_declared_task("mine", spec)


def test_an_undeclared_task_name_says_what_to_do(tmp_path, tiny_raw_data):
    with pytest.raises(SystemExit, match=r"task .mine. is not built in .* `dvc repro prepare_task@mine`"):
        load_task("mine", _data_args(tiny_raw_data, tmp_path), {})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tasks": {"ncbi": {**EXAMPLE, "dir": str(tmp_path)}}}))
    with pytest.raises(SystemExit, match="ncbi is a built-in task's name"):
        prepare_task.main(
            ["--name", "ncbi", "--params", str(params), "--out-dir", str(tmp_path / "o")]
            + ["--metrics", str(tmp_path / "m.json")]
        )
