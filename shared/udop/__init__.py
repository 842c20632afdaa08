"""udop: the Universal Data Orchestration Platform."""
