"""ORM models, one module per aggregate; everything re-exported here."""

from robosystems.models.audit import SecurityEvent
from robosystems.models.base import Base
from robosystems.models.identity import ApiKey, AuthSession, User, UserToken
from robosystems.models.mail import MailOutbox
from robosystems.models.orgs import ORG_ROLES, ORG_TYPES, Org, OrgLimits, OrgUser

__all__ = [
    "ORG_ROLES",
    "ORG_TYPES",
    "ApiKey",
    "AuthSession",
    "Base",
    "MailOutbox",
    "Org",
    "OrgLimits",
    "OrgUser",
    "SecurityEvent",
    "User",
    "UserToken",
]
