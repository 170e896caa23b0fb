"""A user's own annotations in each format, on real lines: NCBI disease test documents (their text, mentions and
MEDIC IDs) written as BioC XML and JSON (with the `bioc` package), brat and TSV, read back to the same mentions;
and the malformed-input errors, each naming the file and line (BioC: the document and annotation)."""

from __future__ import annotations

import bioc
import pytest
from bioc import biocjson, biocxml

from ehrbert.corpora.annotations import check_gold_ids, read_annotations
from ehrbert.corpora.pubtator import read_pubtator
from ehrbert.corpora.records import FormatError


@pytest.fixture(scope="module")
def ncbi_documents(raw_data):
    documents = read_pubtator(raw_data / "ncbi_disease" / "NCBItestset_corpus.txt")
    return [d for d in documents if any(len(m.concept_ids) > 1 for m in d.mentions)][:2] + documents[:4]


def _key(documents):
    """What a reader must give back, in doc_id order (a brat folder is read in file-name order)."""
    return sorted((d.doc_id, d.text, [(m.spans, m.text, m.concept_ids) for m in d.mentions]) for d in documents)


def _bioc_collection(documents) -> bioc.BioCCollection:
    collection = bioc.BioCCollection()
    for document in documents:
        out = bioc.BioCDocument()
        out.id = document.doc_id
        title, abstract = document.title, document.text[len(document.title) + 1 :]
        for offset, text in ((0, title), (len(title) + 1, abstract)):  # each at its offset, as converters write them
            passage = bioc.BioCPassage()
            passage.offset, passage.text = offset, text
            out.add_passage(passage)
        for i, mention in enumerate(document.mentions):
            annotation = bioc.BioCAnnotation()
            annotation.id, annotation.text = str(i), mention.text
            annotation.infons.update(identifier="|".join(mention.concept_ids), type=mention.type)
            for start, end in mention.spans:
                annotation.add_location(bioc.BioCLocation(start, end - start))
            out.passages[0].add_annotation(annotation)
        collection.add_document(out)
    return collection


def test_bioc_brat_and_tsv_read_back_ncbi_documents(tmp_path, ncbi_documents):
    expected = _key(ncbi_documents)
    collection = _bioc_collection(ncbi_documents)
    with open(tmp_path / "ncbi.xml", "w") as handle:
        biocxml.dump(collection, handle)
    with open(tmp_path / "ncbi.json", "w") as handle:
        biocjson.dump(collection, handle)
    assert _key(read_annotations(tmp_path / "ncbi.xml", "bioc")) == expected
    assert _key(read_annotations(tmp_path / "ncbi.json", "bioc")) == expected

    brat = tmp_path / "brat"
    brat.mkdir()
    for document in ncbi_documents:
        (brat / f"{document.doc_id}.txt").write_text(document.text)
        lines, n = [], 0
        for i, mention in enumerate(document.mentions, start=1):
            offsets = ";".join(f"{s} {e}" for s, e in mention.spans)
            lines.append(f"T{i}\t{mention.type} {offsets}\t{mention.text}")
            for concept_id in mention.concept_ids:
                n += 1
                lines.append(f"N{n}\tReference T{i} {concept_id}\t{mention.text}")
        lines.append("#1\tAnnotatorNotes T1\ta note, skipped")
        (brat / f"{document.doc_id}.ann").write_text("\n".join(lines) + "\n")
    assert _key(read_annotations(brat, "brat")) == expected

    rows = ["doc_id\tstart\tend\ttext\tconcept_id"]
    rows += [
        f"{d.doc_id}\t{m.start}\t{m.end}\t{m.text}\t{'|'.join(m.concept_ids) or '-1'}"
        for d in ncbi_documents
        for m in d.mentions
    ]
    (tmp_path / "mentions.tsv").write_text("\n".join(rows) + "\n")
    texts = ["doc_id\ttext"] + [f"{d.doc_id}\t{d.text}" for d in ncbi_documents]
    (tmp_path / "texts.tsv").write_text("\n".join(texts) + "\n")
    assert _key(read_annotations(tmp_path / "mentions.tsv", "tsv", texts=tmp_path / "texts.tsv")) == expected
    without_text = read_annotations(tmp_path / "mentions.tsv", "tsv")
    assert {d.text for d in without_text} == {""}
    assert sum(len(d.mentions) for d in without_text) == sum(len(d.mentions) for d in ncbi_documents)


def test_pubtator_is_the_built_in_reader(raw_data):
    path = raw_data / "ncbi_disease" / "NCBItestset_corpus.txt"
    assert _key(read_annotations(path, "pubtator")) == _key(read_pubtator(path))


BRAT_TEXT = "Familial adenomatous polyposis and colon cancer."


@pytest.mark.parametrize(
    "ann, line, message",
    [
        ("T1\tDisease 0 30\tFamilial adenomatous polyposis\nT2\tDisease 35 46\tcolon canc\n", 2, "the text at"),
        ("T1\tDisease 0 80\tFamilial\n", 1, "outside the text"),
        ("T1\tDisease zero 8\tFamilial\n", 1, "are not numbers"),
        ("T1\tDisease 0 8\n", 1, "expected T<n>"),
        ("T1\tDisease 0 8\tFamilial\nN1\tReference T2 D011125\tx\n", 2, "normalization of T2"),
        ("T1\tDisease 0 8\tFamilial\nN1\tD011125\n", 2, "expected N<n>"),
    ],
)
def test_malformed_brat_names_the_file_and_line(tmp_path, ann, line, message):
    (tmp_path / "doc.txt").write_text(BRAT_TEXT)
    (tmp_path / "doc.ann").write_text(ann)
    with pytest.raises(FormatError, match=message) as caught:
        read_annotations(tmp_path, "brat")
    assert caught.value.path == str(tmp_path / "doc.ann") and caught.value.line_no == line


@pytest.mark.parametrize(
    "mentions, line, message",
    [
        ("doc_id\tstart\tend\ttext\n", 1, "expected the header"),
        ("doc_id\tstart\tend\ttext\tconcept_id\nd1\t0\t8\tFamilial\tD1\nd1\t9\tx\tadenomatous\tD1\n", 3, "numbers"),
        ("doc_id\tstart\tend\ttext\tconcept_id\nd1\t0\t8\tFamilial\n", 2, "5 tab-separated fields"),
        ("doc_id\tstart\tend\ttext\tconcept_id\nd2\t0\t8\tFamilial\tD1\n", 2, "document d2 is not in"),
        ("doc_id\tstart\tend\ttext\tconcept_id\nd1\t0\t7\tFamilial\tD1\n", 2, "the text at"),
    ],
)
def test_malformed_tsv_names_the_file_and_line(tmp_path, mentions, line, message):
    (tmp_path / "texts.tsv").write_text(f"doc_id\ttext\nd1\t{BRAT_TEXT}\n")
    (tmp_path / "mentions.tsv").write_text(mentions)
    with pytest.raises(FormatError, match=message) as caught:
        read_annotations(tmp_path / "mentions.tsv", "tsv", texts=tmp_path / "texts.tsv")
    assert caught.value.path == str(tmp_path / "mentions.tsv") and caught.value.line_no == line


def test_malformed_bioc_names_the_document_and_annotation(tmp_path, ncbi_documents):
    collection = _bioc_collection(ncbi_documents[:1])
    collection.documents[0].passages[0].annotations[0].text = "not the text"
    with open(tmp_path / "bad.xml", "w") as handle:
        biocxml.dump(collection, handle)
    with pytest.raises(FormatError, match=f"document {ncbi_documents[0].doc_id}, annotation 0: the text at"):
        read_annotations(tmp_path / "bad.xml", "bioc")
    (tmp_path / "broken.xml").write_text("<collection><document>")
    with pytest.raises(FormatError, match="not BioC XML"):
        read_annotations(tmp_path / "broken.xml", "bioc")
    with pytest.raises(ValueError, match="unknown annotation format 'conll'"):
        read_annotations(tmp_path / "bad.xml", "conll")


def test_gold_ids_missing_from_the_vocabulary_fail_or_are_dropped_with_a_count(tmp_path, ncbi_documents, raw_data):
    from ehrbert.corpora.medic import read_medic
    from ehrbert.corpora.records import Vocabulary

    medic = read_medic(raw_data / "medic" / "CTD_diseases.tsv.gz")
    documents = ncbi_documents[:3]
    assert check_gold_ids(documents, medic, "ncbi.tsv") is documents  # every NCBI ID here is in MEDIC
    missing = sorted({c for d in documents for m in d.mentions for c in m.concept_ids})[0]
    smaller = Vocabulary([c for c in medic.concepts if c.concept_id != missing])
    affected = sum(missing in m.concept_ids for d in documents for m in d.mentions)
    with pytest.raises(FormatError, match=rf"ncbi.tsv: {affected} of \d+ mentions have gold IDs not in the vocab"):
        check_gold_ids(documents, smaller, "ncbi.tsv")
    kept = check_gold_ids(documents, smaller, "ncbi.tsv", policy="drop")
    assert sum(len(d.mentions) for d in kept) == sum(len(d.mentions) for d in documents) - affected
    assert all(missing not in m.concept_ids for d in kept for m in d.mentions)
    with pytest.raises(ValueError, match="unknown-ID policy 'skip'"):
        check_gold_ids(documents, smaller, "ncbi.tsv", policy="skip")
