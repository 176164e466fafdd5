"""Test doubles of the review servers that labelfix talks to."""
