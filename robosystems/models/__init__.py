"""ORM models, one module per aggregate; everything re-exported here."""

from robosystems.models.audit import SecurityEvent
from robosystems.models.base import Base
from robosystems.models.billing import (
    INVOICE_STATUSES,
    LIVE_SUBSCRIPTION_STATUSES,
    SUBSCRIPTION_STATUSES,
    BillingAuditLog,
    BillingCustomer,
    BillingInvoice,
    BillingInvoiceCounter,
    BillingInvoiceLineItem,
    BillingSubscription,
)
from robosystems.models.billing_depth import BillingCreditPurchase, BillingPlanChange, OrgEntitlementOverride
from robosystems.models.graphs import (
    GRAPH_ROLES,
    Graph,
    GraphCredits,
    GraphCreditTransaction,
    GraphOwnershipConflict,
    GraphUsage,
    GraphUser,
)
from robosystems.models.identity import ApiKey, AuthSession, User, UserToken
from robosystems.models.mail import MailOutbox
from robosystems.models.org_extras import INVITATION_STATUSES, OrgAuditEvent, OrgInvitation
from robosystems.models.orgs import ORG_ROLES, ORG_TYPES, Org, OrgLimits, OrgUser
from robosystems.models.outbound import OutboundAttempt, OutboundDelivery, OutboundEndpoint, OutboundEvent
from robosystems.models.webhooks import TaskOutbox, WebhookEvent

__all__ = [
    "INVOICE_STATUSES",
    "LIVE_SUBSCRIPTION_STATUSES",
    "SUBSCRIPTION_STATUSES",
    "BillingAuditLog",
    "BillingCreditPurchase",
    "BillingPlanChange",
    "OrgEntitlementOverride",
    "BillingCustomer",
    "BillingInvoice",
    "BillingInvoiceCounter",
    "BillingInvoiceLineItem",
    "BillingSubscription",
    "GRAPH_ROLES",
    "Graph",
    "GraphCreditTransaction",
    "GraphCredits",
    "GraphOwnershipConflict",
    "GraphUsage",
    "GraphUser",
    "INVITATION_STATUSES",
    "OrgAuditEvent",
    "OrgInvitation",
    "ORG_ROLES",
    "ORG_TYPES",
    "ApiKey",
    "AuthSession",
    "Base",
    "MailOutbox",
    "Org",
    "OrgLimits",
    "OrgUser",
    "OutboundAttempt",
    "OutboundDelivery",
    "OutboundEndpoint",
    "OutboundEvent",
    "SecurityEvent",
    "TaskOutbox",
    "User",
    "UserToken",
    "WebhookEvent",
]
