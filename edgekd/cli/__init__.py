"""Typer/Rich command line. The only package that imports typer or rich."""
