"""Benchmarks: each module runs with ``python -m benchmarks.<name>`` and prints its numbers.

``TS_MATCHING_CORE=pure`` makes every benchmark import the interpreted matching core even
where the compiled one is installed (scripts/build_accelerated.py), to compare the two.
"""

import os

if os.environ.get("TS_MATCHING_CORE") == "pure":
    from tests.pure_core import install

    install()
