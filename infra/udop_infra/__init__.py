"""The udop CDK app: one thin stack composing one construct per concern.

``infra/app.py`` is the entry point (``npx cdk synth`` runs it through ``cdk.json``); the
constructs here never import Lambda code, only the core compiler and spec loader.
"""
