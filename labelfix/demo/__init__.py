"""The AG News test split (7,600 rows) for `labelfix scan demo`.

Rebuilt by `python -m labelfix.demo.build PATH/TO/test.csv`.
"""
