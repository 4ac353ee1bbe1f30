"""The seed's choreography, with eventbook: services publish and subscribe, loosely coupled.

Run it: python examples/choreography.py
"""

import eventbook as eb


class Customer(eb.Event):
    name: str
    address: str
    email: str


book = eb.EventBook("shop")
SIGNUP = book.topic("customer.signup", Customer)
UPDATE = book.topic("customer.update", Customer)


@book.service
class CustomerService:
    @eb.pub(SIGNUP)
    def signup(self, customer: Customer) -> Customer:
        print("SignUp")
        return customer

    @eb.pub(UPDATE)
    def update(self, customer: Customer) -> Customer:
        print("Update")
        return customer


@book.service
class BankService:
    @eb.sub(SIGNUP)
    def create_account(self, customer: Customer) -> None:
        print(f"Service Name: {type(self).__name__}, Customer Name: {customer.name}")


@book.service
class MailService:
    # Subscribe to just the events you care about.
    @eb.sub(SIGNUP)
    @eb.sub(UPDATE)
    async def send(self, customer: Customer) -> None:
        print(f"Service Name: {type(self).__name__}, To: {customer.email}")


@book.service
class PostService:
    @eb.sub(SIGNUP)
    def send(self, customer: Customer) -> None:
        print(f"Service Name: {type(self).__name__}, Address: {customer.address}")


@eb.sub(SIGNUP)
def welcome_log(customer: Customer) -> None:
    """A plain function subscribes too: a one-function service named after it."""
    print(f"Service Name: welcome_log, Customer Name: {customer.name}")


if __name__ == "__main__":
    customer = Customer(name="SELO", address="Seoul, Korea", email="rochan87@gmail.com")
    with book.start():  # memory:// unless EVENTBOOK_BROKER says otherwise
        CustomerService().signup(customer)
        CustomerService().update(customer)
