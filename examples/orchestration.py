"""The seed's orchestration, with eventbook: one coordinator drives each service in turn.

Each step is a request over the broker to the service that owns it, which may run
in another process; the coordinator waits for its answer before the next step.

Run it: python examples/orchestration.py
"""

import asyncio

import eventbook as eb


class Customer(eb.Event):
    name: str
    address: str
    email: str


class Account(eb.Event):
    number: str
    holder: str


book = eb.EventBook("bank")
OPEN_ACCOUNT = book.topic("bank.open_account", Customer, reply=Account)
SEND_WELCOME = book.topic("mail.send_welcome", Customer)
SEND_PACKAGE = book.topic("post.send_package", Customer)


class CustomerService:
    async def signup(self, customer: Customer) -> Account:
        # Open an account
        account: Account = await book.request(OPEN_ACCOUNT, customer)
        # Send a welcome mail
        await book.request(SEND_WELCOME, customer)
        # Send the sign-up package
        await book.request(SEND_PACKAGE, customer)
        return account


@book.service
class BankService:
    @eb.sub(OPEN_ACCOUNT)
    def create_account(self, customer: Customer) -> Account:
        print(f"Service Name: {type(self).__name__}, Customer Name: {customer.name}")
        return Account(number="ACC-0001", holder=customer.name)


@book.service
class MailService:
    @eb.sub(SEND_WELCOME)
    async def send(self, customer: Customer) -> None:
        print(f"Service Name: {type(self).__name__}, To: {customer.email}")


@book.service
class PostService:
    @eb.sub(SEND_PACKAGE)
    def send(self, customer: Customer) -> None:
        print(f"Service Name: {type(self).__name__}, Address: {customer.address}")


async def main() -> None:
    customer = Customer(name="SELO", address="Seoul, Korea", email="rochan87@gmail.com")
    async with book.start():
        account = await CustomerService().signup(customer)
    print(f"Signed up {account.holder} with account {account.number}")


if __name__ == "__main__":
    asyncio.run(main())
