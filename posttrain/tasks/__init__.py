"""Built-in tasks: data generators with exact scoring, for the demo and the learning tests."""

from posttrain.tasks.arithmetic import ArithmeticTask, Problem, wrong_answers
from posttrain.tasks.evaluate import EvalResult, Generation, exact_match_accuracy, generate_greedy

__all__ = [
    "ArithmeticTask",
    "EvalResult",
    "Generation",
    "Problem",
    "exact_match_accuracy",
    "generate_greedy",
    "wrong_answers",
]
