"""What pods may share through Redis: the response cache, spend budgets, and the gate that keeps Redis
trouble off the request path."""
