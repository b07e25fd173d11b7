"""The worked example of docs/architecture.md (adding a tokenizer) runs as written."""

import re
from pathlib import Path

import torch

from kmim.config import load_config
from kmim.fit import TOKENIZERS, fit_tokenizer, load_tokenizer, training_split

DOC = Path(__file__).parent.parent / "docs" / "architecture.md"


def test_adding_a_tokenizer_example(tmp_path, tiny_overrides):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) < 50
    exec(compile(code, str(DOC), "exec"), {})
    try:
        cfg = load_config(None, [*tiny_overrides, "tokenizer.name=kmeans-pooled"])
        tok = fit_tokenizer(cfg.tokenizer, training_split(cfg), progress=False)
        tok.save(tmp_path / "pooled.pt")
        imgs = torch.stack([training_split(cfg).ds[i][0] for i in range(3)])
        assert tok.kind == "kmeans-pooled" and tok.feature_dim == 4  # 4x4 patch pooled to 2x2, 1 channel
        assert torch.equal(load_tokenizer(tmp_path / "pooled.pt").encode(imgs), tok.encode(imgs))
    finally:
        TOKENIZERS.pop("kmeans-pooled", None)
