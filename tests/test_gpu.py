"""The runtime on the CUDA execution provider: skipped where onnxruntime cannot run a CUDA session here (probed by
creating one, conftest.cuda_works). The fast graph's KV buffers, step inputs and logits live on the GPU, the
provider that ran is reported, fp32 matches torch there and the fp16 fast graph (written for this EP) agrees."""
import numpy as np
import pytest
from conftest import cuda_works, tiny_random_gpt

from lmforge.data.tokenize import train_char
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.models import model_spec
from lmforge.runtime import Generator
from lmforge.runtime.scoring import stepped_logits
from lmforge.export.verify import check_prompts, torch_rows

pytestmark = pytest.mark.skipif(not cuda_works(), reason="no CUDA provider/GPU here")
TEXT = "why did the chicken cross the road? to get to the other side! café 😀"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    manifest = {"name": "gpu", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "model", manifest, ExportConfig(fp16=True))
    return model, out


def test_cuda_is_the_provider_that_runs(tiny):
    gen = Generator(tiny[1], device="cuda")
    assert gen.provider == gen.session.get_providers()[0] == "CUDAExecutionProvider"
    assert Generator(tiny[1]).provider == "CUDAExecutionProvider"  # auto picks it


def test_cuda_picks_the_fp16_fast_graph_and_the_portable_fp32_one(tiny):
    """GroupQueryAttention's CUDA kernel is float16/bfloat16 only: fp32 runs its portable graph on the GPU."""
    assert Generator(tiny[1], variant="fp16", device="cuda").fast
    assert not Generator(tiny[1], device="cuda").fast
    assert Generator(tiny[1], device="cuda", fast=True).fast  # asked for: GroupQueryAttention then runs on the CPU


@pytest.mark.parametrize("variant", ["fp16", "fp32"])
def test_kv_buffers_step_inputs_and_logits_live_on_the_gpu(tiny, variant):
    gen = Generator(tiny[1], variant=variant, device="cuda", fast=True)
    dec = gen.decoder(2, 16)
    assert dec.device == "cuda"
    assert {v.device_name().lower() for v in dec.kv} == {"cuda"}
    assert {dec.values[n].device_name().lower() for n in ("input_ids", "position_ids", "seqlens_k", "logits")} == {"cuda"}
    assert dec.values["total_sequence_length"].device_name().lower() == "cpu"  # the kernel reads it on the host
    logits = dec.prefill([[3, 4, 5], [6]])
    assert isinstance(logits, np.ndarray) and logits.shape == (2, gen.vocab_size)
    assert dec.step(np.array([7, 8])).shape == (2, gen.vocab_size)


@pytest.mark.parametrize("fast", [True, False])
def test_fp32_on_cuda_matches_torch_through_the_runtime(tiny, fast):
    model, out = tiny
    prompts, steps = check_prompts(model_spec(model), None)
    ref, forced = torch_rows(model, prompts, steps)
    got = stepped_logits(Generator(out, device="cuda", fast=fast), prompts, forced)
    assert np.abs(got - ref).max() < 1e-2  # fp32 kernels on the GPU (TF32 matmuls may round more than the CPU)


def test_fp16_fast_graph_on_cuda_agrees_with_fp32(tiny):
    model, out = tiny
    half = Generator(out, variant="fp16", device="cuda")
    assert half.fast and half.provider == "CUDAExecutionProvider"
    assert half.session.get_inputs()[4].type == "tensor(float16)"
    prompts, steps = check_prompts(model_spec(model), None)
    ref, forced = torch_rows(model, prompts, steps)
    got = stepped_logits(half, prompts, forced)
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_generate_on_cuda_equals_cpu(tiny):
    _, out = tiny
    kw = {"max_new_tokens": 20, "temperature": 0}
    cpu, gpu = Generator(out, device="cpu"), Generator(out, device="cuda")
    assert gpu.generate(["why", "the chicken"], **kw) == cpu.generate(["why", "the chicken"], **kw)
    assert "".join(gpu.stream("why", **kw)) == cpu.generate("why", **kw)
