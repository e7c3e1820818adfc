"""Every numerical tolerance of the spec tests, in one place, with its reason.

Each is (rtol, atol) for ``numpy.testing.assert_allclose``.
"""

#: Hand-worked numbers and closed forms vs the spec in float64.  The arithmetic is exact up to a few
#: roundings of exp/log (relative 1e-16 each); 1e-12 leaves room for those and nothing else.
HAND = (1e-12, 1e-12)

#: The spec in float64 vs the brute-force loops in float64 (tests/brute.py).  Both are exact math up
#: to summation order and the spec's max-subtraction before exp, which move results by about 1e-15
#: relative at the tiny sizes drawn; any real disagreement (a wrong index, mask, tiling) is O(0.01).
F64 = (1e-9, 1e-10)

#: Gradients: torch autograd vs jax.grad in float64 (the same math, two autodiff engines), and both
#: vs central finite differences of the float64 spec (step 1e-6: truncation error about 1e-12 times
#: the third derivative, rounding about 1e-16 / 1e-6 = 1e-10, relative to an O(1) directional slope).
GRAD = (1e-9, 1e-10)
FINITE_DIFF = (1e-6, 1e-7)

#: float32 with logits/keys spread over +-80, vs float64 gold.  float32 rounds a value of size 80
#: to about 80 * 6e-8 = 5e-6 absolute; inside exp that is a 5e-6 relative change of a weight, so
#: outputs of size O(1) move by ~1e-5; 1e-4 allows an order of magnitude for accumulation.
F32_WIDE = (1e-4, 1e-4)

#: float16 (unit roundoff 4.9e-4) at d <= 8, l <= 6, outputs of size O(1): projections and sums
#: accumulate ~10 roundings, so ~5e-3; 3e-2 leaves headroom for exp amplifying a rounded logit.
F16 = (3e-2, 3e-2)

#: "Tends to": a mixture whose dominant mix logit is m weighs the others by about exp(-m); at
#: m = 40 that is 4e-18, far below float64's resolution of an O(1) output.
DOMINANT = (1e-12, 1e-12)
