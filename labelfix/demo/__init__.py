"""The AG News test split (7,600 rows) for `labelfix scan demo`; rebuilt by `python -m labelfix.demo.build`."""
