"""Publish a burst of emails for three companies, and one digest."""

from tasks import Email, send_digest, send_email

for n in range(5):
    for company_id in (1, 2, 3):
        handle = send_email.delay(company_id, Email(to=f"user{n}@company{company_id}.example",
                                                    subject=f"Invoice #{n}"))
print("last job:", handle.id, "in queue", handle.queue)
send_digest.delay([1, 2, 3])
