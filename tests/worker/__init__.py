"""Tests of worker/: one package per sub-package of it; the flat modules' tests sit here."""
