"""The retraining loop: the registry and its database (``registry``, ``db``, typed ``records``), a request
turned into a job's config (``requests``), where jobs run (``backends``), the job process and its gate
(``job``, ``gate``), feedback, and the use-cases behind the admin routes (``operations``)."""
