// Cypress settings for the sample project. orchestrate passes the spec list and the
// JUnit reporter on the command line, so nothing here is needed for it to work.
const { defineConfig } = require("cypress");

module.exports = defineConfig({
  e2e: {
    // No baseUrl: cy.visit("app/index.html") is served by Cypress from this folder.
    specPattern: "cypress/e2e/**/*.cy.{js,jsx,ts,tsx}",
    supportFile: false,
  },
  video: false,
  screenshotOnRunFailure: true,
});
