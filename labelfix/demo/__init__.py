"""The AG News test split (7,600 rows) for `labelfix scan demo`; see scripts/make_demo.py."""
