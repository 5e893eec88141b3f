"""The frameworks of docs/frameworks.md: each a small recipe over the existing layers, measured against GRPO
with `reasonloop compare method=<module name>`."""
