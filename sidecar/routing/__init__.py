"""One request's journey: the pipeline (cache, budgets, route, price, store, spend), the router (plan →
attempts → answer), a stream's attempt and its continuation, the outcome values, the catch-all."""
