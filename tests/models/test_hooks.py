"""Hook points and splicing (`models/hooks.py`) on tiny torch modules: parsing, pairs, module
lookup, how a module's input is found, and `spliced` replacing outputs, inputs or whole
modules, with its hooks gone after the block, also after an exception."""

import pytest
import torch
from torch import nn

from saescope.errors import ConfigError, InputError
from saescope.models.hooks import (
    HookPair,
    HookPoint,
    attached,
    describe_hooks,
    find_module,
    hook_points,
    module_input,
    spliced,
)


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


X = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))  # (batch, positions, d)


# ----- HookPoint, HookPair ------------------------------------------------------------------------


def test_hook_point_parse():
    assert HookPoint.parse("layers.1") == HookPoint("layers.1", "out")
    assert HookPoint.parse("layers.1:out") == HookPoint("layers.1", "out")
    assert HookPoint.parse("layers.1.mlp:in") == HookPoint("layers.1.mlp", "in")
    assert str(HookPoint.parse("a.b:out")) == "a.b" and str(HookPoint.parse("a.b:in")) == "a.b:in"
    assert HookPoint.parse("x:") == HookPoint("x", "out")  # an empty side is the output
    for bad in ("layers.1:input", "layers.1:in:out", "x:IN"):
        with pytest.raises(InputError, match=f"hook '{bad}': the part after ':' must be"):
            HookPoint.parse(bad)


def test_hook_pair_specs_and_pick():
    a, b = torch.ones(2, 3), torch.zeros(2, 5)
    sae = HookPair("m")
    assert sae.specs == ["m"]
    x, y = sae.pick({"m": a, "n": b})
    assert x is a and y is a
    tc = HookPair("m:in", "m")
    assert tc.specs == ["m:in", "m"]
    x, y = tc.pick({"m:in": a, "m": b})
    assert x is a and y is b
    with pytest.raises(KeyError):
        tc.pick({"m:in": a})


@pytest.mark.parametrize(
    ("x", "y", "replaces"),
    [
        ("m:in", "m", True),
        ("m:in", "m:out", True),
        ("a.b:in", "a.b", True),
        ("m:in", None, False),  # an SAE on M's input
        ("m", "m", False),
        ("m", "n", False),
        ("m:in", "n", False),  # another module's output
        ("a.b:in", "a", False),
    ],
)
def test_hook_pair_replaces_module(x, y, replaces):
    assert HookPair(x, y).replaces_module() is replaces


def test_a_pair_of_two_inputs_does_not_replace_the_module():
    assert HookPair("m:in", "m:in").replaces_module() is False


# ----- find_module, hook_points -------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(2))
        self.head = nn.Linear(2, 1)


def test_hook_points_are_every_module_path():
    net = _Net()
    assert hook_points(net) == [
        "layers",
        "layers.0",
        "layers.0.0",
        "layers.0.1",
        "layers.1",
        "layers.1.0",
        "layers.1.1",
        "head",
    ]
    assert find_module(net, "layers.1.0") is net.layers[1][0]
    assert find_module(net, "head") is net.head


def test_find_module_names_close_matches():
    net = _Net()
    with pytest.raises(ConfigError, match=r"no module 'haed' in _Net; did you mean head\?") as e:
        find_module(net, "haed")
    assert "saescope hooks MODEL" in str(e.value)
    with pytest.raises(ConfigError, match=r"did you mean .*layers\.1\.0"):
        find_module(net, "layers.1.O")
    with pytest.raises(ConfigError) as e:
        find_module(net, "completely_unrelated_name")
    assert "did you mean" not in str(e.value)
    with pytest.raises(ConfigError, match="no module ''"):
        find_module(net, "")  # the model itself is not a hook point


class _Shapes(nn.Module):
    """Modules whose input and output shapes differ, one called by keyword only, one never
    called, and an embedding (whose input is token ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.up = nn.Linear(3, 5)
        self.kw = _Keyword()
        self.unused = nn.Linear(5, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.kw(hidden_states=self.up(self.embed(ids)))


class _Keyword(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.sum(-1)


def test_describe_hooks_gives_output_and_input_shapes():
    got = describe_hooks(_Shapes(), torch.zeros(2, 4, dtype=torch.long))
    assert [tuple(h) for h in got] == [
        ("embed", "Embedding", (2, 4, 3), None),  # token ids in: not an activation
        ("up", "Linear", (2, 4, 5), (2, 4, 3)),
        ("kw", "_Keyword", (2, 4), (2, 4, 5)),  # its input given by keyword
        ("unused", "Linear", None, None),  # never ran
    ]
    assert got[1].path == "up" and got[1].module == "Linear" and got[1].input == (2, 4, 3)


def test_describe_hooks_leaves_no_hook_behind():
    model = _Shapes()
    describe_hooks(model, torch.zeros(1, 2, dtype=torch.long))
    assert _hooks(model) == 0
    with pytest.raises(IndexError):
        describe_hooks(model, torch.full((1, 2), 99, dtype=torch.long))  # id out of range
    assert _hooks(model) == 0


# ----- module_input -------------------------------------------------------------------------------


def test_module_input_finds_the_tensor_a_module_was_called_with():
    p = HookPoint("m", "in")
    a, b, c = torch.ones(1), torch.zeros(1), torch.full((1,), 2.0)
    assert module_input(p, (a, b), {"hidden_states": c}) == (0, a)
    where, got = module_input(p, (), {"mask": b, "hidden_states": c})
    assert where == "hidden_states" and got is c  # preferred over earlier keywords
    where, got = module_input(p, (None,), {"mask": "no", "x": b, "y": c})
    assert where == "x" and got is b  # else the first tensor keyword
    with pytest.raises(InputError, match=r"hook m:in: the module was called without a tensor"):
        module_input(p, ("text",), {"flag": True})
    with pytest.raises(InputError, match="without a tensor input"):
        module_input(p, (), {})


# ----- spliced ------------------------------------------------------------------------------------


@torch.no_grad()
def test_an_output_is_replaced():
    model = _model()
    clean = model(X)
    with spliced(model, {"0": torch.zeros_like}):
        out = model(X)
    torch.testing.assert_close(out, model[2](torch.zeros(2, 5, 4)))
    assert not torch.allclose(out, clean)
    torch.testing.assert_close(model(X), clean)  # gone after the block
    assert _hooks(model) == 0


@torch.no_grad()
def test_an_input_is_replaced_and_the_module_still_runs():
    model = _model()
    h = model[1](model[0](X))
    with spliced(model, {"2:in": lambda a: 2 * a}):
        out = model(X)
    torch.testing.assert_close(out, model[2](2 * h))
    assert _hooks(model) == 0


@torch.no_grad()
def test_an_input_given_by_keyword_is_replaced():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return self.inner(hidden_states=x)

    class KwLinear(nn.Linear):
        def forward(self, hidden_states):  # called with keywords only, as in transformers
            return super().forward(hidden_states)

    block = Block()
    block.inner = KwLinear(3, 3)
    with spliced(block, {"inner:in": lambda a: a + 1}):
        out = block(X)
    torch.testing.assert_close(
        out, nn.functional.linear(X + 1, block.inner.weight, block.inner.bias)
    )


@torch.no_grad()
def test_whole_module_replaces_the_module_by_a_function_of_its_input():
    model = _model()
    h = model[1](model[0](X))
    twin = nn.Linear(4, 2)
    with spliced(model, {"2:in": twin}, whole_module=True):
        out = model(X)
    torch.testing.assert_close(out, twin(h))
    torch.testing.assert_close(model(X), model[2](h))
    assert _hooks(model) == 0


@torch.no_grad()
@pytest.mark.parametrize(("spec", "whole"), [("0", False), ("2:in", False), ("2:in", True)])
def test_keep_first_leaves_position_zero_clean(spec, whole):
    model = _model()
    clean = model(X)
    width = 2 if whole else None  # a whole module's stand-in gives the module's output width

    def fives(a):
        return torch.full_like(a[..., :width], 5.0)

    with spliced(model, {spec: fives}, keep_first=True, whole_module=whole):
        kept = model(X)
    with spliced(model, {spec: fives}, keep_first=False, whole_module=whole):
        every = model(X)
    torch.testing.assert_close(kept[:, 0], clean[:, 0])
    torch.testing.assert_close(kept[:, 1:], every[:, 1:])
    assert not torch.allclose(every[:, 0], clean[:, 0])


@torch.no_grad()
def test_a_replacement_keeps_the_activations_dtype():
    model = _model()
    with spliced(model, {"0": lambda a: a.double()}):
        assert model(X).dtype == torch.float32


def test_hooks_are_removed_after_an_exception():
    model = _model()
    clean = model(X)
    with pytest.raises(RuntimeError, match="boom"):
        with spliced(model, {"0": torch.zeros_like, "2:in": lambda a: a * 3}):
            assert _hooks(model) == 2
            raise RuntimeError("boom")
    assert _hooks(model) == 0
    torch.testing.assert_close(model(X), clean)


def test_a_bad_hook_point_removes_the_hooks_already_placed():
    model = _model()
    with pytest.raises(ConfigError, match="no module '5'"):
        with spliced(model, {"0": torch.zeros_like, "5": torch.zeros_like}):
            pass
    assert _hooks(model) == 0
    with pytest.raises(InputError, match="must be 'in' or 'out'"):
        with spliced(model, {"0": torch.zeros_like, "2:mid": torch.zeros_like}):
            pass
    assert _hooks(model) == 0


def test_attached_observers_see_outputs_and_inputs_and_change_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3)
    seen = {}

    def watch(name):
        def fn(value, clean):
            assert clean is value  # no module replaced: the clean value is the value itself
            seen[name] = value.clone()

        return fn

    with attached(model, {"1": watch("relu"), "2:in": watch("into_2")}):
        out = model(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    torch.testing.assert_close(seen["relu"], model[1](model[0](x)), rtol=0, atol=0)
    torch.testing.assert_close(seen["into_2"], seen["relu"], rtol=0, atol=0)
    assert not model[1]._forward_hooks and not model[2]._forward_pre_hooks
