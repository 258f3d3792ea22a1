"""A validator closing a ticket clears its failure banner, in the verdict's transaction; the closer is
whoever recorded the verdict (never its free-text author)."""

from django.db.models.signals import post_save
from django.dispatch import receiver

from tickets.models import Verdict


@receiver(post_save, sender=Verdict, dispatch_uid="tickets.close_on_validator_verdict")
def close_ticket_on_validator_verdict(sender, instance, created, raw=False, **kwargs):
    if raw or not created or not instance.closes_ticket:
        return
    instance.ticket.close(by=instance.recorded_by, now=instance.created_at)
