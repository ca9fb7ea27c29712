"""privacy/ — floor 1: accountants, budget policy, the signed ledger, reports, empirical-audit maths.

Plain Python and numbers: nothing here imports model code or any other homebody folder.
"""
