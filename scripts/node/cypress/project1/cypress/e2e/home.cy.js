// The bundled static page loads and reacts to a click.
describe("home page", () => {
  beforeEach(() => {
    cy.visit("app/index.html");
  });

  it("shows the welcome heading", () => {
    cy.title().should("eq", "project1");
    cy.get("h1").should("have.text", "Welcome to project1");
  });

  it("greets after a click", () => {
    cy.get("#greeting").should("not.be.visible");
    cy.get("#greet").click();
    cy.get("#greeting").should("be.visible").and("have.text", "Hello from orchestrate");
  });
});
