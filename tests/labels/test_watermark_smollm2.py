"""The watermark on the real smollm2-135m: generated text is detected with the tokenizer alone; Shakespeare is not."""

from __future__ import annotations

import pytest
import torch

from personal.provenance import detect_watermark, generate_labelled, provenance_for, verify_labelled
from personal.provenance.tokenizers import load_tokenizer
from tests.conftest import require_dataset
from tests.labels.conftest import one_thread


@pytest.mark.realmodel
@pytest.mark.slow
def test_smollm2_generation_detected_and_human_text_not(signer, watermark_key, data_root):
    from personal.models import load_base

    roles = require_dataset(data_root, "shakespeare_roles") / "by_play_and_character"
    base = load_base("smollm2-135m")
    torch.manual_seed(0)
    with one_thread():
        out = generate_labelled(base.model, base.tokenizer, [{"role": "user", "content": "Describe a rainy morning in the city."}],
                                provenance_for(base), signer, watermark_key=watermark_key,
                                max_new_tokens=110, min_new_tokens=110)
    assert verify_labelled(str(out), out.manifest, public_key=signer.public_key()).ok
    tokenizer = load_tokenizer("smollm2-135m")  # the detector needs the tokenizer and the key, not the model
    d = detect_watermark(out.content, tokenizer, watermark_key)
    assert d.tokens_scored >= 60 and d.verdict == "watermarked", (d, out.content)
    largest = sorted(roles.glob("*.txt"), key=lambda p: p.stat().st_size)[-3:]
    assert len(largest) == 3
    for path in largest:
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:250]
        human = detect_watermark(tokenizer.decode(ids), tokenizer, watermark_key)
        assert human.verdict == "not watermarked" and human.p_value > 1e-4, (path.name, human)
