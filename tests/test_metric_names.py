"""The metric-name contract: builders and parsers agree, names outside it are refused, the names
stay byte-identical to what older runs logged, and docs/metrics.md lists every family built."""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import sys
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftlab import metric_names as mn
from tests.support.helpers import REPO

DOC = REPO / "docs" / "metrics.md"

# What MLflow accepts in a name, less the separator; a benchmark name as the spec allows it.
segment = st.text(alphabet="abzAZ09_-.: ", min_size=1, max_size=12)
benchmark = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
slashed = st.lists(segment, min_size=1, max_size=3).map("/".join)  # older runs' benchmark names
measure = segment.filter(lambda s: s not in ("sim", "contaminated"))
index = st.integers(min_value=0, max_value=10**6)


# --- byte-identical names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (mn.profile("ppl"), "profile/ppl"),
        (mn.ci_low(mn.profile("ppl")), "profile/ppl_ci_low"),
        (mn.ci_high(mn.profile("ppl_mean_example")), "profile/ppl_mean_example_ci_high"),
        (mn.profile_distinct(2), "profile/distinct_2"),
        (mn.profile_similarity("gsm8k-tiny", "embed_max_sim"), "profile/sim/gsm8k-tiny/embed_max_sim"),
        (mn.profile_ngram_overlap("gsm8k", 3), "profile/sim/gsm8k/ngram_overlap_3"),
        (mn.profile_contamination("gsm8k"), "profile/contaminated/gsm8k"),
        (mn.evaluated("gsm8k", "score"), "eval/gsm8k/score"),
        (mn.evaluated("humaneval", "pass_at_1"), "eval/humaneval/pass_at_1"),
        (mn.base("mmlu.stem", "acc_norm"), "base/mmlu.stem/acc_norm"),
        (mn.gain("gsm8k", "loglik"), "gain/gsm8k/loglik"),
        (mn.ci_bounds(mn.gain("gsm8k", "score")), ("gain/gsm8k/score_ci_low", "gain/gsm8k/score_ci_high")),
        (mn.benchmark_metric("eval", "gsm8k", "items"), "eval/gsm8k/items"),
        (mn.weights_layer(7, "rel_change"), "weights/layer_7/rel_change"),
        (mn.weights_layer(np.int64(7), "rel_change"), "weights/layer_7/rel_change"),
        (mn.weights_module("q_proj", "cosine"), "weights/module_q_proj/cosine"),
        (mn.weights_depth("middle", "abs_change"), "weights/depth_middle/abs_change"),
        (mn.weights_total("max_abs_change"), "weights/total/max_abs_change"),
        (mn.weights_spectral("matrices"), "weights/spectral/matrices"),
        (mn.train("final_loss"), "train/final_loss"),
        (mn.train("lr"), "train/lr"),
        (mn.stage_time("evaluate"), "time/evaluate_s"),
        (mn.report_trials("failed"), "report/trials_failed"),
        (mn.report_predictor("gsm8k/score", "cv_mae"), "report/predictor/gsm8k/score/cv_mae"),
    ],
)
def test_names_are_the_ones_older_runs_logged(built: object, expected: object) -> None:
    assert built == expected


# --- round trips ----------------------------------------------------------------------------------


@given(measure)
def test_profile_measure_round_trips(m: str) -> None:
    assert mn.parse(mn.profile(m)) == mn.ProfileMeasure(m)


@given(index)
def test_profile_distinct_round_trips(n: int) -> None:
    parsed = mn.parse_profile(mn.profile_distinct(n))
    assert isinstance(parsed, mn.ProfileMeasure) and parsed.distinct == n


@given(benchmark, segment, index)
def test_profile_similarity_round_trips(bench: str, m: str, n: int) -> None:
    assert mn.parse(mn.profile_similarity(bench, m)) == mn.ProfileSimilarity(bench, m)
    parsed = mn.parse_profile(mn.profile_ngram_overlap(bench, n))
    assert isinstance(parsed, mn.ProfileSimilarity) and (parsed.benchmark, parsed.ngram) == (bench, n)
    assert mn.parse(mn.profile_contamination(bench)) == mn.ProfileContamination(bench)


@given(st.sampled_from(mn.BENCHMARK_KINDS), st.one_of(benchmark, slashed), segment)
def test_benchmark_metrics_round_trip(kind: mn.BenchmarkKind, bench: str, metric: str) -> None:
    expected = mn.BenchmarkMetric(kind, bench, metric)
    builder = {"eval": mn.evaluated, "base": mn.base, "gain": mn.gain}[kind]
    assert mn.parse(builder(bench, metric)) == mn.parse(mn.benchmark_metric(kind, bench, metric)) == expected


@given(benchmark, segment)
def test_a_ci_bound_names_the_metric_it_bounds(bench: str, metric: str) -> None:
    name = mn.gain(bench, metric)
    for bound in mn.ci_bounds(name):
        assert mn.is_ci(bound) and mn.ci_of(bound) == name
    assert mn.ci_of(name) is None or mn.is_ci(name)


@given(index, segment, segment)
def test_weights_round_trip(i: int, group: str, stat: str) -> None:
    layer = mn.parse_weights(mn.weights_layer(i, stat))
    assert layer == mn.WeightsMetric("layer", str(i), stat) and layer.layer == i
    assert mn.parse(mn.weights_module(group, stat)) == mn.WeightsMetric("module", group, stat)
    assert mn.parse(mn.weights_depth(group, stat)) == mn.WeightsMetric("depth", group, stat)
    assert mn.parse(mn.weights_total(stat)) == mn.WeightsMetric("total", "", stat)
    assert mn.parse(mn.weights_spectral(stat)) == mn.WeightsMetric("spectral", "", stat)
    assert all(mn.parse_weights(n).layer is None for n in (mn.weights_module(group, stat), mn.weights_total(stat)))


@given(segment)
def test_train_time_and_report_round_trip(part: str) -> None:
    assert mn.parse(mn.train(part)) == mn.TrainMetric(part)
    assert mn.parse(mn.stage_time(part)) == mn.StageTime(part)
    assert mn.parse(mn.report_trials(part)) == mn.ReportTrials(part)


@given(slashed, segment)
def test_report_predictor_round_trips(target: str, stat: str) -> None:
    assert mn.parse(mn.report_predictor(target, stat)) == mn.ReportPredictor(target, stat)


# --- what is not in the contract ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "loss",
        "profile/",
        "profile/sim",
        "profile/contaminated",
        "profile/sim/gsm8k",
        "profile/a/b",
        "profile/contaminated/gsm8k/x",
        "profile/sim/gsm8k/a/b",
        "eval/score",
        "eval//score",
        "eval/gsm8k/",
        "eval/gsm8k//score",
        "Eval/gsm8k/score",
        "gains/gsm8k/score",
        "weights/layer_x/rel_change",
        "weights/layer_-1/rel_change",
        "weights/layer_1",
        "weights/layer_1/a/b",
        "weights/other/rel_change",
        "weights/total",
        "train/",
        "train/a/b",
        "time/train",
        "time/_s",
        "time/a/b_s",
        "report/trials_",
        "report/predictor/cv_mae",
        "report/predictor//cv_mae",
        "system/gpu_0_utilization_percentage",
    ],
)
def test_names_outside_the_contract_parse_as_none(name: str) -> None:
    assert mn.parse(name) is None
    assert all(family.parse(name) is None for family in mn.FAMILIES)


@pytest.mark.parametrize(
    "build",
    [
        lambda: mn.profile(""),
        lambda: mn.profile("a/b"),
        lambda: mn.profile("sim"),
        lambda: mn.profile_distinct(-1),
        lambda: mn.profile_similarity("a/b", "x"),
        lambda: mn.profile_contamination(""),
        lambda: mn.evaluated("", "score"),
        lambda: mn.evaluated("gsm8k/", "score"),
        lambda: mn.base("a//b", "score"),
        lambda: mn.gain("gsm8k", "a/b"),
        lambda: mn.benchmark_metric("train", "gsm8k", "score"),  # type: ignore[arg-type]
        lambda: mn.weights_layer(-1, "rel_change"),
        lambda: mn.weights_layer(1.5, "rel_change"),  # type: ignore[arg-type]
        lambda: mn.weights_layer(True, "rel_change"),
        lambda: mn.weights_module("q_proj", ""),
        lambda: mn.train("a/b"),
        lambda: mn.stage_time(""),
        lambda: mn.report_predictor("gsm8k/score/", "cv_mae"),
    ],
)
def test_builders_refuse_parts_that_make_a_name_ambiguous(build: Callable[[], str]) -> None:
    with pytest.raises(ValueError, match="metric name part|profile measure|benchmark metric kind"):
        build()


def test_each_name_belongs_to_one_family() -> None:
    for family in mn.FAMILIES:
        name = _instance(family.template)
        owners = [f.template for f in mn.FAMILIES if f.parse(name) is not None]
        # profile/<measure> and profile/sim/<bench>/<measure> hold their numbered special cases
        assert owners == [family.template] or (
            family.template.endswith("_<n>") and len(owners) == 2 and family.template in owners
        ), (name, owners)


# --- the registry, the doc and the module's shape -------------------------------------------------

NOT_FAMILY_BUILDERS = {"ci_low", "ci_high", "ci_bounds", "ci_of", "benchmark_metric"}  # suffixes; eval/base/gain


def test_every_builder_is_a_registered_family() -> None:
    """A builder added without a FAMILIES entry (and so without the doc check below) fails here."""
    registered = {family.build for family in mn.FAMILIES}
    public = {
        name: fn
        for name, fn in vars(mn).items()
        if inspect.isfunction(fn) and fn.__module__ == mn.__name__ and not name.startswith(("_", "parse", "is_"))
    }
    unregistered = sorted(
        name for name, fn in public.items() if fn not in registered and name not in NOT_FAMILY_BUILDERS
    )
    assert not unregistered, f"builders without a family in metric_names.FAMILIES: {unregistered}"
    assert len({f.template for f in mn.FAMILIES}) == len(mn.FAMILIES)


SAMPLES = {"i": "3", "n": "3", "k": "1"}  # numbered placeholders; any other <name> becomes "name"
ARTIFACT = re.compile(r"\.(json|parquet|csv|html|md|png)$")


def _instance(pattern: str) -> str:
    """A concrete name from a doc pattern: ``<bench>`` -> ``bench``, ``<i>`` -> ``3``."""
    return re.sub(r"<(\w+)>", lambda m: SAMPLES.get(m[1], m[1]), pattern)


def _expand(pattern: str) -> list[str]:
    """``a_{x,y}/{p,q}`` -> the four names it stands for."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def documented_names() -> list[str]:
    """Every metric name docs/metrics.md lists, as concrete names (prefixes, wildcards and artifacts left out)."""
    roots = ("profile/", "eval/", "base/", "gain/", "weights/", "train/", "time/", "report/")
    spans = re.findall(r"`([^`\s]+)`", DOC.read_text(encoding="utf-8"))
    patterns = [s for s in spans if s.startswith(roots) and not s.endswith(("/", "*")) and not ARTIFACT.search(s)]
    return [_instance(name) for p in patterns for name in _expand(p)]


def test_the_doc_lists_every_family_the_module_builds() -> None:
    names = documented_names()
    missing = [f.template for f in mn.FAMILIES if not any(f.parse(n) for n in names)]
    assert not missing, f"docs/metrics.md lists no name of: {missing}"


def test_every_name_the_doc_lists_is_in_the_contract() -> None:
    names = documented_names()
    assert len(names) > 50
    assert [n for n in names if mn.parse(n) is None] == []
    text = DOC.read_text(encoding="utf-8")
    assert all(f"`{suffix}`" in text for suffix in mn.CI_SUFFIXES)


def test_each_family_template_is_an_instance_of_itself() -> None:
    for family in mn.FAMILIES:
        assert family.parse(_instance(family.template)) is not None, family.template


def test_the_module_is_a_leaf() -> None:
    """metric_names imports only the standard library, so every layer of sftlab can import it."""
    tree = ast.parse(inspect.getsource(mn))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in imported} <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _documented_pattern() -> Callable[[str], bool]:
    """Whether a logged name matches a pattern docs/metrics.md lists (``<x>`` stands for one part)."""
    spans = re.findall(r"`([^`\s]+)`", DOC.read_text(encoding="utf-8"))
    patterns = [re.escape(p).replace(r"\*", "[^/]+") for s in spans for p in _expand(s)]
    regex = re.compile("|".join(re.sub(r"<\w+>", "[^/]+", p) for p in patterns))
    return lambda name: regex.fullmatch(name) is not None


def test_what_stages_log_is_documented_name_by_name() -> None:
    """Names as the weights and evaluate stages build them, each matched against the doc's patterns."""
    from sftlab.evals.scoring import gain_metrics
    from sftlab.spec.schema import EvaluationConfig
    from sftlab.weight_diff import Spectrum, TensorDiff, WeightDiff

    spectrum = Spectrum((2.0, 1.0), 1.5, 0.9, True)
    tensors = [
        TensorDiff(f"model.layers.{i}.{m}.weight", (4, 4), 1.0, 1.1, 0.1, 1.0, 0.05, spectrum=spectrum)
        for i in range(3)
        for m in ("self_attn.q_proj", "mlp.down_proj", "input_layernorm")
    ]
    tensors += [TensorDiff(n, (8, 4), 1.0, 1.0, 0.0, 1.0, 0.0) for n in ("model.embed_tokens.weight", "lm_head.weight")]
    scored = {"score": 0.5, "exact_match": 0.5, "items": 10.0, "items_too_long": 0.0, "items_clamped": 0.0}
    scored |= {"score_ci_low": 0.4, "score_ci_high": 0.6}
    evaluation = EvaluationConfig(bootstrap_resamples=10)
    logged = [
        *WeightDiff(tensors).metrics(),
        *gain_metrics("gsm8k", scored, scored, [1.0, 0.0], [0.0, 1.0], evaluation),
    ]
    documented = _documented_pattern()
    assert {n.split("/")[0] for n in logged} == {"weights", "eval", "base", "gain"}
    assert [n for n in logged if mn.parse(n) is None or not documented(n)] == []
