"""Run by ``python manage.py test`` (Django's runner makes and drops test_<NAME>)."""

import datetime

from django.db import connection, connections
from django.test import TestCase

from app.models import Item


class RoundTrip(TestCase):
    def test_json_and_aware_datetime(self) -> None:
        at = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
        Item.objects.create(data={"a": [1, 2], "b": None}, at=at)
        item = Item.objects.get()
        self.assertEqual(item.data, {"a": [1, 2], "b": None})
        self.assertEqual(item.at, at)
        self.assertIsNotNone(item.at.tzinfo)
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))
        self.assertEqual(type(connections["default"]).__module__, "lambdapool.django.base")
