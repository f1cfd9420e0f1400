"""The prediction-and-weighting ablation's verdict (experiments/ablations/prediction_weighting.py),
including its sampler check (the final eps and x0 models sampled by DDPM's ancestral sampler)."""

from experiments.ablations import prediction_weighting
from experiments.ablations import seeds


def _fd(mean, sd=1.0):
  return {"fd": seeds.summarize([mean - sd, mean, mean + sd])}


def _results(eps, x0):
  return [("eps, simple", 10, _fd(eps)), ("x0, simple", 10, _fd(x0))]


def test_sampler_check_compares_eps_and_x0_only_beyond_the_spread():
  verdict = prediction_weighting._verdict  # pylint: disable=protected-access
  results = _results(eps=70.0, x0=25.0)  # the few-step table: x0 better, DISAGREES
  text = verdict(results, (10,), {"eps, simple": _fd(30.0), "x0, simple": _fd(40.0)}, 250)
  assert "eps vs x0 (simple): DISAGREES (eps better)." in text, text
  assert ("Sampled as DDPM did (ancestral, 250 steps): eps 30.000 ± 1.000 vs x0 40.000 ± 1.000: "
          "agrees (eps better).") in text, text
  close = verdict(results, (10,), {"eps, simple": _fd(30.0), "x0, simple": _fd(31.0)}, 250)
  assert f"x0 31.000 ± 1.000: {seeds.NOT_RESOLVED} (eps better)." in close, close
  worse = verdict(results, (10,), {"eps, simple": _fd(50.0), "x0, simple": _fd(20.0)}, 250)
  assert "x0 20.000 ± 1.000: DISAGREES (eps better)." in worse, worse
  # without both models sampled ancestrally there is nothing to compare
  assert "Sampled as DDPM did" not in verdict(results, (10,), {"eps, simple": _fd(30.0)}, 250)
  assert "Sampled as DDPM did" not in verdict(results, (10,))
