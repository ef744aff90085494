from django.db import models


class Item(models.Model):
    data = models.JSONField()
    at = models.DateTimeField()
