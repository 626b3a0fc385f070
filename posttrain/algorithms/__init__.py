"""One small module per algorithm; each says in its docstring where it departs from its paper."""
