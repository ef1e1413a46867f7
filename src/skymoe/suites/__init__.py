"""Evaluation suite YAMLs shipped with the package (load with skymoe.eval.suite.load_suite(name))."""
