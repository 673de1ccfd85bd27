"""One engine behind every entry point: the fast engine in float32 gives the reference engine's
tokens for every public method; choosing an engine; weights owned once; the structure checks
(every transformer parameter reaches the fast runner, no import cycle, edit keywords that
cannot drift)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmar_core import EditOptions, EditSession, Pipeline, TransformerConfig
from hmar_core.editing import EditFields, outpaint
from hmar_core.fast import FastEngine, FastRunner
from hmar_core.reference_engine import ReferenceEngine
from hmar_core.sampler import ScaleInput

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    Pipeline.random(seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engines(folder: Path) -> tuple[Pipeline, Pipeline]:
    reference = Pipeline.from_pretrained(folder, engine="reference")
    fast = Pipeline.from_pretrained(folder, engine="fast", dtype=torch.float32)
    return reference, fast


def _picture(height: int = 24, width: int = 32, seed: int = 1) -> np.ndarray:
    return (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)


def _box(height: int, width: int, box: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[box] = True
    return mask


def _same_result(a: object, b: object) -> None:
    """Identical tokens of every scale; images equal up to one grey level of rounding."""
    assert len(a.tokens) == len(b.tokens) > 0
    for x, y in zip(a.tokens, b.tokens):
        assert torch.equal(x, y)
    for x, y in zip(a.images, b.images):
        diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
        assert diff.max() <= 1


# ------------------------------------------------------------------------- the surface
def test_engine_choice_surface(folder: Path):
    assert Pipeline.from_pretrained(folder).engine == "fast"  # auto
    assert Pipeline.from_pretrained(folder, engine="auto").engine == "fast"
    reference = Pipeline.from_pretrained(folder, engine="reference")
    assert reference.engine == "reference" and isinstance(reference.backend, ReferenceEngine)
    fast = Pipeline.from_pretrained(folder, engine="fast")
    assert fast.engine == "fast" and isinstance(fast.backend, FastEngine)
    assert fast.backend.runner.dtype == torch.float32  # CPU default: float32 blocks
    with pytest.raises(ValueError, match="engine must be one of auto, fast, reference"):
        Pipeline.from_pretrained(folder, engine="turbo")
    with pytest.raises(ValueError, match="fast engine only"):
        Pipeline.from_pretrained(folder, engine="reference", cuda_graphs=False)
    assert reference.with_engine("fast").engine == "fast"
    assert fast.with_engine("reference").engine == "reference"


def test_fast_engine_owns_half_weights_without_float32_copies(folder: Path):
    pipe = Pipeline.from_pretrained(folder, engine="fast", dtype=torch.bfloat16)
    block = pipe.transformer.base_blocks[0]
    assert block.ffn.fc1.weight.dtype == torch.bfloat16
    assert pipe.backend.runner._blocks[0].fc1_w.data_ptr() == block.ffn.fc1.weight.data_ptr()
    blocks = [m for name in ("base_blocks", "ns_blocks", "mask_blocks")
              for m in getattr(pipe.transformer, name)]
    assert all(p.dtype == torch.bfloat16 for b in blocks for p in b.parameters())
    assert pipe.transformer.ns_head.out.weight.dtype == torch.float32  # heads stay float32
    out = pipe.generate(seed=0, batch_size=2)
    assert out.images.shape == (2, 3, pipe.image_size, pipe.image_size)
    # on an existing float32 pipeline the fast engine copies and leaves the modules alone
    reference = Pipeline.from_pretrained(folder, engine="reference")
    copy = reference.with_engine("fast", dtype=torch.bfloat16)
    copy.generate(seed=0, batch_size=1)
    assert reference.transformer.base_blocks[0].ffn.fc1.weight.dtype == torch.float32


def test_moving_a_pipeline_rebuilds_its_engine(folder: Path):
    pipe = Pipeline.from_pretrained(folder, engine="fast", dtype=torch.float32)
    first = pipe.backend
    pipe.to("cpu")
    assert pipe.backend is not first
    assert torch.equal(pipe.generate(seed=5).tokens[-1], pipe.generate(seed=5).tokens[-1])


def test_edit_keywords_are_the_options_fields():
    """``pipe.inpaint(..., **fields)`` and friends cannot drift from EditOptions."""
    assert set(EditFields.__annotations__) == {f.name for f in dataclasses.fields(EditOptions)}


def test_unknown_edit_keyword_is_a_clear_error(engines):
    reference, _ = engines
    with pytest.raises(TypeError, match="unknown edit option"):
        reference.inpaint(_picture(), _box(24, 32, (slice(2, 9), slice(3, 9))), sead=3)


# ----------------------------------------------------------------- same tokens, any method
def test_generate_identical(engines):
    reference, fast = engines
    for seed in (0, 7):
        a = reference.generate(seed=seed, batch_size=3, steps=2)
        b = fast.generate(seed=seed, batch_size=3, steps=2)
        for x, y in zip(a.tokens, b.tokens):
            assert torch.equal(x, y)
        assert (a.images - b.images).abs().max() <= 1e-5
        assert (a.confidence - b.confidence).abs().max() <= 1e-6


@pytest.mark.parametrize("options", [
    EditOptions(seed=4, steps=2, num_variants=2),
    EditOptions(seed=5, steps=1, strength=2, class_id=3),
    EditOptions(seed=6, steps=2, fit="masked", padding=4, feather=3),
], ids=["inpaint", "strength", "fit-masked"])
def test_inpaint_identical(engines, options):
    reference, fast = engines
    image, mask = _picture(), _box(24, 32, (slice(4, 12), slice(6, 18)))
    _same_result(reference.edit(image, mask, options), fast.edit(image, mask, options))


def test_class_edit_identical(engines):
    reference, fast = engines
    image = Image.fromarray(_picture(16, 16))
    a = reference.edit_class(image, 5, seed=8, num_variants=2)
    b = fast.edit_class(image, 5, seed=8, num_variants=2)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max() <= 1


def test_outpaint_identical(engines):
    reference, fast = engines
    image = _picture(20, 30)
    options = EditOptions(seed=2, steps=1, feather=2)
    a = outpaint(reference, image, right=40, bottom=6, options=options)
    b = outpaint(fast, image, right=40, bottom=6, options=options)
    assert len(a.windows) > 1  # several windows: later windows see what earlier ones made
    _same_result(a, b)


def test_resumed_re_edit_identical(engines):
    """A re-edit that resumes from its session gives what a fresh run on the other engine
    gives; previews arrive on both engines."""
    reference, fast = engines
    image, mask = _picture(), _box(24, 32, (slice(4, 12), slice(6, 18)))
    first = EditOptions(seed=9, steps=2, fine_from=2, fine_seed=1)
    second = dataclasses.replace(first, fine_seed=2)
    session, previews = EditSession(), []
    fast.edit(image, mask, first, session=session)
    resumed = fast.edit(image, mask, second, session=session, on_preview=previews.append)
    assert resumed.resumed_from >= 1 and session.hits >= 2
    assert [p.scale for p in previews] == list(range(len(fast.patch_nums)))
    _same_result(resumed, reference.edit(image, mask, second))


def test_app_handler_identical_through_either_engine(engines):
    from app import handlers as h

    reference, fast = engines
    source = _picture()
    rgba = np.dstack([source, np.full(source.shape[:2], 255, np.uint8)])
    layer = np.zeros((*source.shape[:2], 4), np.uint8)
    layer[5:12, 8:20] = (255, 46, 136, 255)
    editor = {"background": rgba, "layers": [layer], "composite": rgba}
    controls = h.EditControls(quality=1, cfg=1.5, top_k=0, top_p=0.0, seed=4, variants=2,
                              grow=1, feather=2, only_masked=False, padding=8, heatmap=False)
    results = []
    for pipe in (reference, fast):
        *_, last = h.inpaint_events(pipe, None, editor, -1, 0, controls)
        results.append(last[4])  # (preview, gallery, files, status, result, selected)
    for a, b in zip(results[0].images, results[1].images):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


# ------------------------------------------------------------------------ structure
def _perturbed_logits(model: torch.nn.Module, name: str | None) -> torch.Tensor:
    """The fast runner's guided logits of every scale and both branches, after adding noise
    to one transformer parameter (``None``: none)."""
    model = _copy(model)
    if name is not None:
        with torch.no_grad():
            param = dict(model.named_parameters())[name]
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    runner = FastRunner(model, torch.float32)
    cfg = model.cfg
    labels = torch.tensor([1, 4])
    runner.begin(labels, cfg.null_class)
    gen = torch.Generator().manual_seed(0)
    outs = []
    with torch.no_grad():
        for scale, pn in enumerate(cfg.patch_nums):
            x = None if scale == 0 else torch.randn(2, pn * pn, cfg.latent_channels, generator=gen)
            outs.append(runner.guided(labels, cfg.null_class, 0.5, ScaleInput(scale, x)).flatten())
            if scale > 0 and cfg.has_mask_branch:
                masked = torch.zeros(2, pn * pn, dtype=torch.bool)
                masked[:, :: 2] = True
                x_mask = torch.randn(2, pn * pn, cfg.latent_channels, generator=gen)
                outs.append(runner.guided(labels, cfg.null_class, 0.5, ScaleInput(
                    scale, x, x_mask, masked, "mask")).flatten())
    return torch.cat(outs)


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("kind", ["hmar", "var"])
def test_every_transformer_parameter_reaches_the_fast_runner(kind):
    """The hand-written runner is a second forward pass: it must read every parameter of the
    transformer. Perturbing any one of them must change the runner's logits."""
    cfg = TransformerConfig.from_name("tiny", kind=kind)
    model = Pipeline.random("tiny", cfg, seed=4).transformer
    # a parameter the runner cannot know about: the check must report it (and only it)
    model.register_parameter("probe", torch.nn.Parameter(torch.zeros(3)))
    base = _perturbed_logits(model, None)
    unused = [name for name, _ in model.named_parameters()
              if torch.equal(_perturbed_logits(model, name), base)]
    assert unused == ["probe"], f"parameters the fast runner ignores: {unused}"


def _imports(path: Path, package: str) -> set[str]:
    """Every hmar_core module ``path`` imports, at any level (TYPE_CHECKING and functions
    included)."""
    module = package + "." + ".".join(path.relative_to(ROOT / package).with_suffix("").parts)
    module = module.removesuffix(".__init__")
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target + "." + alias.name for alias in node.names]
            found.update(n for n in [target, *names] if n.startswith(package))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package))
    return found


def _module_graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    names = {}
    for path in files:
        name = package + "." + ".".join(path.relative_to(ROOT / package).with_suffix("").parts)
        names[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in names.items():
        # "from .editing import X" targets the module when X is a module, else the package
        graph[name] = {t for t in _imports(path, package) if t in names and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among modules, ignoring edges into a package's own ``__init__`` from inside it
    (a package importing its submodules is not a cycle)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a submodule importing its own package's __init__
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_inside_hmar_core():
    graph = _module_graph("hmar_core")
    assert "hmar_core.pipeline" in graph["hmar_core.official"]  # the scan sees imports
    assert _cycles(graph) == []


def test_cycle_finder_finds_cycles():
    assert _cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == [
        ["p.a", "p.b", "p.c", "p.a"]]
    assert _cycles({"p": {"p.a"}, "p.a": {"p"}}) == []  # package ↔ its submodule


# --------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_fast_engine_on_cuda_every_method(folder: Path):
    """The fast engine on CUDA (fp16 blocks, graphs, fused kernels): every method runs, a seed
    reproduces its result, and pixels away from the mask keep their values."""
    pipe = Pipeline.from_pretrained(folder, device="cuda", engine="auto")
    assert pipe.engine == "fast" and pipe.backend.runner.dtype == torch.float16
    assert pipe.transformer.base_blocks[0].ffn.fc1.weight.dtype == torch.float16
    first, again = (pipe.generate(seed=3, batch_size=2, steps=2) for _ in range(2))
    eager = pipe.with_engine("fast", cuda_graphs=False, compile_vae=False)
    for x, y, z in zip(first.tokens, again.tokens,
                       eager.generate(seed=3, batch_size=2, steps=2).tokens):
        assert torch.equal(x, y) and torch.equal(x, z)  # capture, replay and eager agree
    graphs = pipe.backend.runner.graphs
    assert len(graphs) > 0 and graphs.error is None
    assert any(key[:2] == ("sample", "mask") for key in graphs._graphs)  # whole steps
    image, mask = _picture(), _box(24, 32, (slice(4, 12), slice(6, 18)))
    options = EditOptions(seed=4, steps=2, feather=0, num_variants=2)
    a, b = pipe.edit(image, mask, options), pipe.edit(image, mask, options)
    for x, y in zip(a.images, b.images):
        assert np.array_equal(np.asarray(x), np.asarray(y))
        assert np.array_equal(np.asarray(x)[~mask], image[~mask])
    session = EditSession()
    pipe.edit(image, mask, options, session=session)
    resumed = pipe.edit(image, mask, dataclasses.replace(options, fine_from=2, fine_seed=1),
                        session=session)
    assert resumed.resumed_from >= 1
    wide = pipe.outpaint(image, right=40, seed=1, steps=1, feather=0)
    assert wide.size == (72, 24)
    assert np.array_equal(np.asarray(wide)[:, :32], image)
    assert pipe.edit_class(Image.fromarray(image), 3, seed=2).size == (32, 24)
