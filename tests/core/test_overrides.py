"""tools/overrides.py: the shared rule behind both frameworks' override checks."""
import pytest

from mae_transfer.tools.overrides import (OverrideError, accepted_parameters, check_override,
                                          closest, split_added)


class Base:
    def __init__(self, depth=1, width=2):
        pass


class Child(Base):
    def __init__(self, num_classes=3, **kwargs):
        super().__init__(**kwargs)


class Open:
    def __init__(self, scale, **resize_kwargs):  # kwargs kept, not passed to object
        self.kwargs = resize_kwargs


def f(a, b=1):
    pass


def g(a, **kw):
    pass


def test_accepted_parameters_follow_kwargs_up_the_mro():
    assert accepted_parameters(Child) == {"num_classes", "depth", "width"}
    assert accepted_parameters(Base) == {"depth", "width"}
    assert accepted_parameters(Open) is None  # **kwargs that reach object: cannot tell
    assert accepted_parameters(f) == {"a", "b"}
    assert accepted_parameters(g) is None


def test_closest_and_added_keys():
    assert closest("max_iters", ["max_iter", "eval_period"]) == "max_iter"
    assert closest("zzz", ["max_iter"]) is None
    assert split_added("+a.b") == ("a.b", True) and split_added("a.b") == ("a.b", False)


CONFIG = {"train": {"max_iter": 200, "amp": {"enabled": False}, "name": "x"},
          "head": {"_builds": Child, "num_classes": 3},
          "augs": [{"p": 0.5}], "none": []}


def new_keys(node, path):
    return accepted_parameters(node["_builds"]) if "_builds" in node else ()


def describe(node):
    return f" ({node['_builds'].__name__})" if "_builds" in node else ""


def check(key, value):
    check_override(CONFIG, key, value, new_keys, describe)


@pytest.mark.parametrize("key, value, message", [
    ("train.max_iters", 3, "override train.max_iters=3: train has no key 'max_iters' (did you mean "
                           "train.max_iter?); to add it anyway write +train.max_iters=3"),
    ("head.num_clases", 3, "override head.num_clases=3: head (Child) has no key 'num_clases' "
                           "(did you mean head.num_classes?)"),
    ("train.max_iter", "abc", "override train.max_iter='abc': train.max_iter is a number (the "
                              "config has 200), not 'abc'"),
    ("train.amp.enabled", "yes", "train.amp.enabled is true/false (the config has False)"),
    ("train.max_iter", True, "train.max_iter is a number"),
    ("augs.1.p", 0.1, "override augs.1.p: augs is a list of 1 items; name one by its index 0..0"),
    ("none.0", 1, "override none.0: none is an empty list"),
    ("train.name.x", 1, "override train.name.x: train.name is a single value ('x')"),
    ("zzz", 1, "the config has no key 'zzz' (no key is close)"),
])
def test_refusals_are_one_line_naming_the_key(key, value, message):
    with pytest.raises(OverrideError) as err:
        check(key, value)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("train.max_iter", 3), ("train.max_iter", 2.5), ("train.max_iter", None),
    ("head.depth", 4),  # a parameter of the class the node builds (through **kwargs)
    ("augs.0.p", 1), ("train.name", 5), ("train.amp.enabled", True),
])
def test_existing_keys_and_parameters_are_accepted(key, value):
    check(key, value)
