"""Cloud SQL's own refusals of IAM database logins, as the local proxy sends them in ``auth="cloud-sql-iam"``.

A refused token: Cloud SQL for PostgreSQL answers ``FATAL: Cloud SQL IAM service account
authentication failed for user "NAME@PROJECT.iam"`` with SQLSTATE 28000
(invalid_authorization_specification: asyncpg raises ``InvalidAuthorizationSpecificationError``
for it), as seen in GoogleCloudPlatform/cloud-sql-python-connector#442,
cloud-sql-jdbc-socket-factory#727 and #1174, cloud-sql-proxy#1406. Cloud SQL says no more than
that (the reason goes to its server log); the proxy adds its own in parentheses, as for RDS
Proxy's texts (``rds_errors``), so a client can match on Cloud SQL's words.

A plaintext login to an instance that takes encrypted connections only is refused by Postgres's
own pg_hba rule (``no pg_hba.conf entry for host ..., no encryption``, also 28000).
"""

from __future__ import annotations

IAM_AUTH_FAILED = "28000", 'Cloud SQL IAM service account authentication failed for user "{user}"'
NO_ENCRYPTION = "28000", 'no pg_hba.conf entry for host "{host}", user "{user}", database "{database}", no encryption'
