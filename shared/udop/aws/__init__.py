"""udop on AWS: the core logic the Lambda handlers in ``functions/`` call.

``runner`` runs one task from a Step Functions payload, ``deployer`` turns an uploaded definition
into a state machine, ``events`` maps execution status changes to run records. Handlers stay thin:
parse the event, call one function here, shape the response.
"""
