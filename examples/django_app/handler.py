"""AWS Lambda entry point: ``handler.handler``. Mangum turns API Gateway / function URL events
into ASGI requests for Django; ``db.lambda_handler`` makes each event one lambdapool invocation
(numbered, with the Lambda deadline, metrics if asked). Django's backend joins it: the request's
queries run on the instance's warm connection, given back at the end of the request."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

import lambdapool.django
from asgi import application

db: lambdapool.Database[Any] = lambdapool.django.database()  # made now, connects at the first query
handler = db.lambda_handler(Mangum(application, lifespan="off"))
