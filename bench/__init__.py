"""Benchmarks of rlhf-studio's PPO against trl 0.11.4: step time, memory, rollout throughput, detox effect, MFU.

`python -m bench --help` lists the options; results go to BENCHMARKS.md. Not part of the test suite
(tests/test_bench_smoke.py runs only the smallest `--quick` case so the code cannot rot).
"""
