"""Any text given as a spec either parses or raises UsageError: never another exception."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrlab.errors import UsageError
from lrlab.optimizers import parse_optimizer
from lrlab.schedules import parse_schedule

NAMES = ["step", "cosine", "plateau", "onecycle", "lambda", "multistep", "cyclic", "constant", "sgd", "adamw",
         "warmup(linear,epochs=1)+step", "StepLR", "x"]
KEYS = ["step_size", "gamma", "T_max", "patience", "mode", "monitor", "milestones", "lr_lambda", "max_lr", "lr",
        "momentum", "betas", "epochs", "total_steps", "base_lr", "foo"]
VALUES = st.one_of(
    st.integers(-5, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["min", "max", "test_acc", "[1,2]", "[", "]", "(1,", "None", "true", "0.95**epoch", "epoch/0",
                     "'a'", "{1:2}", "1e309", "-0.0", "[[[]]]", "__import__('os')", "lambda: 1", ""]),
    st.text(max_size=8),
)
STRUCTURED = st.builds(
    lambda name, pairs, suffix: name + (":" + ",".join(f"{k}={v}" for k, v in pairs) if pairs else "") + suffix,
    st.sampled_from(NAMES), st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4),
    st.sampled_from(["", "@step", "@epoch", "@", "@@step"]),
)
SPECS = st.one_of(STRUCTURED, st.text(max_size=40))


@pytest.mark.parametrize("parse", [parse_schedule, parse_optimizer], ids=["schedule", "optimizer"])
@settings(max_examples=400, deadline=None)
@given(text=SPECS)
def test_every_spec_parses_or_says_what_is_wrong(parse, text):
    try:
        parse(text)
    except UsageError as error:
        assert str(error) and "\n" not in str(error)
