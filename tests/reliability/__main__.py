"""`python -m tests.reliability` prints the README's "Reliability" table."""

from tests.reliability import all_cases, reliability_table

print(reliability_table(all_cases()))
