"""Built-in udop connectors, registered in entry point group ``udop.connectors`` (see pyproject):
``postgres``, ``mysql``/``mariadb``, ``sqlite`` (``sql``), ``s3``, ``local``, ``gcs``, ``azure``
(``objects``), ``http``, ``graphql`` (``http``), ``redis``, ``rabbitmq`` and ``mongodb``. Every option is in
docs/connectors.md."""
