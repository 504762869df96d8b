"""MLflow metric names: the one owner of the contract that ``docs/metrics.md`` documents.

Stages log what the builders here return, and the report reads names back only through the
parsers here, so a name is spelled in one place. Names are stored in MLflow and compared across
runs of different versions: a builder's output must never change for the same parts.

Builders raise ``ValueError`` for parts that would make a name ambiguous (empty, or a ``/`` where
the contract has one segment). Parsers return a typed name, or None for a name outside their family.
``FAMILIES`` lists every family built here with its template in the doc's notation (``<bench>``
and the like stand for a part); a test checks that ``docs/metrics.md`` lists each one.

A leaf: imports nothing from sftlab, so every layer can use it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

CI_LOW = "_ci_low"
CI_HIGH = "_ci_high"
CI_SUFFIXES = (CI_LOW, CI_HIGH)  # gain/B/score_ci_low is the CI of gain/B/score, not a metric of its own
SAMPLED_ROWS = "_sampled_rows"  # a measure's sample size (bookkeeping, e.g. profile/ppl_sampled_rows)

BenchmarkKind = Literal["eval", "base", "gain"]  # fine-tuned model, base model, eval - base
BENCHMARK_KINDS: tuple[BenchmarkKind, ...] = ("eval", "base", "gain")
PROFILE = "profile/"
_SIM, _CONTAMINATED = "sim", "contaminated"  # profile/<measure> can't be named so: they are families

_SEGMENT = r"[^/]+"
_SEGMENTS = rf"{_SEGMENT}(?:/{_SEGMENT})*"  # a part that may hold slashes, never an empty segment
_PROFILE_SIM = re.compile(rf"profile/{_SIM}/(?P<benchmark>{_SEGMENT})/(?P<measure>{_SEGMENT})")
_PROFILE_CONTAMINATED = re.compile(rf"profile/{_CONTAMINATED}/(?P<benchmark>{_SEGMENT})")
_PROFILE = re.compile(rf"profile/(?P<measure>{_SEGMENT})")
_DISTINCT = re.compile(r"distinct_(?P<n>\d+)")
_NGRAM_OVERLAP = re.compile(r"ngram_overlap_(?P<n>\d+)")
# <kind>/<benchmark>/<metric>; the benchmark name may hold slashes (older runs), the metric never does.
_BENCHMARK = re.compile(rf"(?P<kind>eval|base|gain)/(?P<benchmark>{_SEGMENTS})/(?P<metric>{_SEGMENT})")
_WEIGHTS = re.compile(
    rf"weights/(?:layer_(?P<layer>\d+)|module_(?P<module>{_SEGMENT})|depth_(?P<depth>{_SEGMENT})"
    rf"|(?P<total>total)|(?P<spectral>spectral))/(?P<stat>{_SEGMENT})"
)
_TRAIN = re.compile(rf"train/(?P<name>{_SEGMENT})")
_STAGE_TIME = re.compile(rf"time/(?P<stage>{_SEGMENT})_s")
_REPORT_TRIALS = re.compile(rf"report/trials_(?P<status>{_SEGMENT})")
_REPORT_PREDICTOR = re.compile(rf"report/predictor/(?P<target>{_SEGMENTS})/(?P<stat>{_SEGMENT})")


def _part(value: object, what: str, slashes: bool = False) -> str:
    text = str(value)
    if not text or (not slashes and "/" in text) or text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError(
            f"metric name part {what}={text!r}: expected a non-empty name{'' if slashes else ' without /'}"
        )
    return text


def _index(value: int, what: str) -> str:
    try:
        number = -1 if isinstance(value, bool) else operator.index(value)  # numpy integers too
    except TypeError:
        number = -1
    if number < 0:
        raise ValueError(f"metric name part {what}={value!r}: expected an integer >= 0")
    return str(number)


def _numbered(pattern: re.Pattern[str], measure: str) -> int | None:
    return int(found["n"]) if (found := pattern.fullmatch(measure)) else None


# --- confidence intervals and sample sizes: suffixes on a measured name ---------------------------


def ci_low(name: str) -> str:
    """The lower CI bound logged next to ``name``."""
    return name + CI_LOW


def ci_high(name: str) -> str:
    """The upper CI bound logged next to ``name``."""
    return name + CI_HIGH


def ci_bounds(name: str) -> tuple[str, str]:
    return ci_low(name), ci_high(name)


def is_ci(name: str) -> bool:
    """Whether ``name`` is a CI bound of another metric rather than a measure."""
    return name.endswith(CI_SUFFIXES)


def ci_of(name: str) -> str | None:
    """The measured name a CI bound belongs to (None: not a CI bound)."""
    return next((name.removesuffix(s) for s in CI_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def is_sample_size(name: str) -> bool:
    return name.endswith(SAMPLED_ROWS)


# --- data profile: profile/ -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileMeasure:
    """``profile/<measure>``: a measure of the training data alone; ``distinct`` is n of ``distinct_<n>``."""

    measure: str

    @property
    def distinct(self) -> int | None:
        return _numbered(_DISTINCT, self.measure)


@dataclass(frozen=True)
class ProfileContamination:
    """``profile/contaminated/<bench>``: benchmark items sharing an n-gram with the training data."""

    benchmark: str


@dataclass(frozen=True)
class ProfileSimilarity:
    """``profile/sim/<bench>/<measure>``: similarity of the training data to a benchmark; ``ngram`` is n of
    ``ngram_overlap_<n>``."""

    benchmark: str
    measure: str

    @property
    def ngram(self) -> int | None:
        return _numbered(_NGRAM_OVERLAP, self.measure)


ProfileName = ProfileMeasure | ProfileSimilarity | ProfileContamination


def profile(measure: str) -> str:
    if _part(measure, "measure") in (_SIM, _CONTAMINATED):
        raise ValueError(f"profile measure {measure!r}: the name of a family (profile/{measure}/...)")
    return f"{PROFILE}{measure}"


def profile_distinct(n: int) -> str:
    return profile(f"distinct_{_index(n, 'n')}")


def profile_similarity(benchmark: str, measure: str) -> str:
    return f"{PROFILE}{_SIM}/{_part(benchmark, 'benchmark')}/{_part(measure, 'measure')}"


def profile_ngram_overlap(benchmark: str, n: int) -> str:
    return profile_similarity(benchmark, f"ngram_overlap_{_index(n, 'n')}")


def profile_contamination(benchmark: str) -> str:
    return f"{PROFILE}{_CONTAMINATED}/{_part(benchmark, 'benchmark')}"


def is_profile(name: str) -> bool:
    return name.startswith(PROFILE)


def parse_profile(name: str) -> ProfileName | None:
    if found := _PROFILE_SIM.fullmatch(name):
        return ProfileSimilarity(found["benchmark"], found["measure"])
    if found := _PROFILE_CONTAMINATED.fullmatch(name):
        return ProfileContamination(found["benchmark"])
    if (found := _PROFILE.fullmatch(name)) and found["measure"] not in (_SIM, _CONTAMINATED):
        return ProfileMeasure(found["measure"])
    return None


# --- evaluation: eval/, base/, gain/ --------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkMetric:
    """``<kind>/<bench>/<metric>``: a benchmark metric of the fine-tuned model, the base model or the gain."""

    kind: BenchmarkKind
    benchmark: str
    metric: str


def benchmark_metric(kind: BenchmarkKind, benchmark: str, metric: str) -> str:
    if kind not in BENCHMARK_KINDS:
        raise ValueError(f"benchmark metric kind {kind!r}: expected one of {', '.join(BENCHMARK_KINDS)}")
    return f"{kind}/{_part(benchmark, 'benchmark', slashes=True)}/{_part(metric, 'metric')}"


def evaluated(benchmark: str, metric: str) -> str:
    """``eval/<bench>/<metric>``: the fine-tuned model's score."""
    return benchmark_metric("eval", benchmark, metric)


def base(benchmark: str, metric: str) -> str:
    """``base/<bench>/<metric>``: the base model's score on the same items."""
    return benchmark_metric("base", benchmark, metric)


def gain(benchmark: str, metric: str) -> str:
    """``gain/<bench>/<metric>``: eval - base."""
    return benchmark_metric("gain", benchmark, metric)


def parse_benchmark_metric(name: str) -> BenchmarkMetric | None:
    if found := _BENCHMARK.fullmatch(name):
        return BenchmarkMetric(cast(BenchmarkKind, found["kind"]), found["benchmark"], found["metric"])
    return None


# --- weights: weights/ ----------------------------------------------------------------------------


WeightsScope = Literal["layer", "module", "depth", "total", "spectral"]


@dataclass(frozen=True)
class WeightsMetric:
    """``weights/<scope>[_<group>]/<stat>``: weight change of a block (``layer_<i>``), a module type
    (``module_<type>``: q_proj, norm, embed, ...), a third of the stack (``depth_<third>``: bottom,
    middle, top), all weights (``total``); or spectra of sampled ΔW matrices (``spectral``)."""

    scope: WeightsScope
    group: str  # the layer index, module type or depth third; "" for total and spectral
    stat: str

    @property
    def layer(self) -> int | None:
        return int(self.group) if self.scope == "layer" else None


def weights_layer(index: int, stat: str) -> str:
    return f"weights/layer_{_index(index, 'index')}/{_part(stat, 'stat')}"


def weights_module(module: str, stat: str) -> str:
    return f"weights/module_{_part(module, 'module')}/{_part(stat, 'stat')}"


def weights_depth(third: str, stat: str) -> str:
    return f"weights/depth_{_part(third, 'third')}/{_part(stat, 'stat')}"


def weights_total(stat: str) -> str:
    return f"weights/total/{_part(stat, 'stat')}"


def weights_spectral(stat: str) -> str:
    return f"weights/spectral/{_part(stat, 'stat')}"


def parse_weights(name: str) -> WeightsMetric | None:
    found = _WEIGHTS.fullmatch(name)
    if found is None:
        return None
    scope: WeightsScope = next(k for k in ("layer", "module", "depth", "total", "spectral") if found[k])
    group = found[scope] if scope in ("layer", "module", "depth") else ""
    return WeightsMetric(scope, group, found["stat"])


# --- training and time: train/, time/ -------------------------------------------------------------


@dataclass(frozen=True)
class TrainMetric:
    """``train/<name>``: a training value (final_loss, runtime_s, rows, tokens_per_s, ...) or a
    per-step curve (loss, lr, grad_norm)."""

    name: str


@dataclass(frozen=True)
class StageTime:
    """``time/<stage>_s``: wall-clock seconds of one stage."""

    stage: str


def train(name: str) -> str:
    return f"train/{_part(name, 'name')}"


def stage_time(stage: str) -> str:
    return f"time/{_part(stage, 'stage')}_s"


def parse_train(name: str) -> TrainMetric | None:
    return TrainMetric(found["name"]) if (found := _TRAIN.fullmatch(name)) else None


def parse_stage_time(name: str) -> StageTime | None:
    return StageTime(found["stage"]) if (found := _STAGE_TIME.fullmatch(name)) else None


# --- the report's own metrics: report/ ------------------------------------------------------------


@dataclass(frozen=True)
class ReportTrials:
    """``report/trials_<status>``: planned trials finished, failed or missing."""

    status: str


@dataclass(frozen=True)
class ReportPredictor:
    """``report/predictor/<target>/<stat>``: the gain predictor's CV error; target is ``<bench>/<metric>``."""

    target: str
    stat: str


ReportName = ReportTrials | ReportPredictor


def report_trials(status: str) -> str:
    return f"report/trials_{_part(status, 'status')}"


def report_predictor(target: str, stat: str) -> str:
    return f"report/predictor/{_part(target, 'target', slashes=True)}/{_part(stat, 'stat')}"


def parse_report(name: str) -> ReportName | None:
    if found := _REPORT_TRIALS.fullmatch(name):
        return ReportTrials(found["status"])
    if found := _REPORT_PREDICTOR.fullmatch(name):
        return ReportPredictor(found["target"], found["stat"])
    return None


# --- every family ---------------------------------------------------------------------------------

MetricName = ProfileName | BenchmarkMetric | WeightsMetric | TrainMetric | StageTime | ReportName


def parse(name: str) -> MetricName | None:
    """The typed name of any metric in the contract (None: not one)."""
    for parser in (parse_profile, parse_benchmark_metric, parse_weights, parse_train, parse_stage_time, parse_report):
        if (parsed := parser(name)) is not None:
            return parsed
    return None


def _of(cls: type, test: Callable[[Any], bool] = lambda _: True) -> Callable[[MetricName], bool]:
    return lambda parsed: isinstance(parsed, cls) and test(parsed)


@dataclass(frozen=True)
class Family:
    """One family of names: its template in the doc's notation, its builder, and which parsed names are its."""

    template: str
    build: Callable[..., str]
    accepts: Callable[[MetricName], bool]

    def parse(self, name: str) -> MetricName | None:
        """``name`` parsed, if it belongs to this family (None: another family's, or none's)."""
        found = parse(name)
        return found if found is not None and self.accepts(found) else None


FAMILIES: tuple[Family, ...] = (
    Family("profile/<measure>", profile, _of(ProfileMeasure)),
    Family("profile/distinct_<n>", profile_distinct, _of(ProfileMeasure, lambda p: p.distinct is not None)),
    Family("profile/sim/<bench>/<measure>", profile_similarity, _of(ProfileSimilarity)),
    Family(
        "profile/sim/<bench>/ngram_overlap_<n>",
        profile_ngram_overlap,
        _of(ProfileSimilarity, lambda p: p.ngram is not None),
    ),
    Family("profile/contaminated/<bench>", profile_contamination, _of(ProfileContamination)),
    Family("eval/<bench>/<metric>", evaluated, _of(BenchmarkMetric, lambda p: p.kind == "eval")),
    Family("base/<bench>/<metric>", base, _of(BenchmarkMetric, lambda p: p.kind == "base")),
    Family("gain/<bench>/<metric>", gain, _of(BenchmarkMetric, lambda p: p.kind == "gain")),
    Family("weights/layer_<i>/<stat>", weights_layer, _of(WeightsMetric, lambda p: p.scope == "layer")),
    Family("weights/module_<type>/<stat>", weights_module, _of(WeightsMetric, lambda p: p.scope == "module")),
    Family("weights/depth_<third>/<stat>", weights_depth, _of(WeightsMetric, lambda p: p.scope == "depth")),
    Family("weights/total/<stat>", weights_total, _of(WeightsMetric, lambda p: p.scope == "total")),
    Family("weights/spectral/<stat>", weights_spectral, _of(WeightsMetric, lambda p: p.scope == "spectral")),
    Family("train/<name>", train, _of(TrainMetric)),
    Family("time/<stage>_s", stage_time, _of(StageTime)),
    Family("report/trials_<status>", report_trials, _of(ReportTrials)),
    Family("report/predictor/<bench>/<metric>/<stat>", report_predictor, _of(ReportPredictor)),
)
