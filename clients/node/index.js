'use strict';
module.exports = require('./src/client.js');
