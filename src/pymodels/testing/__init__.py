"""Helpers for testing pymodels and code built on it (throwaway database servers, ...)."""
