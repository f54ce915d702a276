"""`python -m tests.reliability` prints the "Reliability" table of docs/reliability.md."""

from tests.reliability import all_cases, reliability_table

print(reliability_table(all_cases()))
