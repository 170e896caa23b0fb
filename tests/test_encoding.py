"""Encoding vocabulary names: bf16 autocast only where the device computes bf16 in hardware."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from ehrbert.models import encoding, retrieval

TEXTS = ["breast cancer", "colon cancer syndrome", "disease", "deficiency of the heart disease"]


def test_the_cpu_s_bf16_is_read_as_the_makefile_reads_it():
    """The Makefile trains in bf16 or fp32 by /proc/cpuinfo's flags; the encoding must make the same choice on the
    same machine."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(re.findall(r"\w+", cpuinfo.read_text())) if cpuinfo.exists() else set()
    assert encoding.native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_names_are_encoded_in_bf16_only_where_the_device_has_it(tiny_bert, monkeypatch):
    model, tokenizer = AutoModel.from_pretrained(tiny_bert), AutoTokenizer.from_pretrained(tiny_bert)
    model.eval()
    with torch.inference_mode():
        exact = torch.cat([retrieval.mean_pool(model, encoding.encode(tokenizer, [text], 16)) for text in TEXTS])
    autocast = []

    def pool(model, batch):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return retrieval.mean_pool(model, batch)

    for native in (False, True):
        monkeypatch.setattr(encoding, "native_bf16", lambda device, native=native: native)
        autocast.clear()
        vectors = encoding.encode_by_length(model, tokenizer, TEXTS, pool, max_length=16, batch_size=2)
        assert autocast == [native, native]  # two batches, each in bf16 exactly where the device has it
        torch.testing.assert_close(vectors, exact, atol=1e-5 if not native else 1e-2, rtol=0)
