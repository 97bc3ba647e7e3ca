// Checks that need no page at all: a failure here means Cypress itself is broken.
describe("sanity", () => {
  it("runs assertions", () => {
    expect(true).to.equal(true);
    expect([1, 2, 3]).to.have.length(3);
  });

  it("wraps values", () => {
    cy.wrap({ name: "project1" }).its("name").should("eq", "project1");
  });
});
