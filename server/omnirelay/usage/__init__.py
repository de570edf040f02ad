"""Usage: records of every call, their costs, the ledgers that keep them, budgets and reports."""
