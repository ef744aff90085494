"""Infra: the budget, `lambdapool plan`/`check`, and the templates in infra/."""
