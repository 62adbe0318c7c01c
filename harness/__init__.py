"""The one test harness: real servers on localhost (``server``), sample images and the in-process ceiling
(``ceiling``). Tests, benchmarks and load tests all use it; ``benchmarks/`` and ``loadtests/`` never import
each other."""
